"""`graphprune MODEL.onnx --ratio 0.3 ...`: prune a model and write it, with its reports."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..criteria import CRITERIA
from ..errors import UserError, ValidationError
from ..ir.files import atomic_write_text, check_outputs
from .app import EXIT_GATE, fail, main, setup_logging


def default_output(model: Path) -> Path:
    name = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{name}.pruned.onnx")


def _progress(quiet: bool):
    """Phase messages on stderr, for people watching a terminal (never in logs or pipes)."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(phase: str) -> None:
        click.echo(f"[graphprune] {phase}...", err=True)

    return show


@main.command("prune")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ratio", type=float, default=0.3, show_default=True,
              help="Fraction of prunable units (channels) to remove.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: MODEL.pruned.onnx beside the input).")
@click.option("--criterion", type=click.Choice(sorted(CRITERIA)), default="magnitude",
              show_default=True, help="Importance criterion.")
@click.option("--dims", default="channels,heads,mlp,hidden", show_default=True,
              help="Kinds of groups to prune: channels (convolutions), heads (attention heads; "
                   "a GQA kv head goes with its query heads), mlp (transformer intermediate "
                   "width), hidden (the residual stream).")
@click.option("--drop-blocks", type=int, default=0, show_default=True,
              help="Remove the N residual sub-blocks (attention/MLP, identity-shortcut blocks) "
                   "that change the stream least (1 - cosine on random inputs).")
@click.option("--global", "global_rank", is_flag=True,
              help="Rank units across all groups (normalized) instead of a uniform ratio per group.")
@click.option("--target-params", type=float, default=None, metavar="F",
              help="Remove this fraction of the model's parameters (replaces --ratio): the same "
                   "fraction of every group that comes closest to it, or with --global units of "
                   "all groups ranked together (non-uniform widths). Heads go as whole GQA "
                   "groups.")
@click.option("--round-to", type=int, default=1, show_default=True,
              help="Keep widths a multiple of N (hardware friendly).")
@click.option("--min-keep", type=int, default=1, show_default=True,
              help="Never keep fewer than N units in a group.")
@click.option("--protect", multiple=True, metavar="PATTERN",
              help="Freeze groups touching a node/tensor whose name matches (fnmatch); repeatable.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON report here.")
@click.option("--external-data", is_flag=True, help="Store weights in a .data file beside the model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs/criteria.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--calib", "calib", type=click.Path(exists=True, path_type=Path), default=None,
              help="Calibration/fidelity inputs: .npz with one array per model input (samples "
                   "on axis 0), or a folder of images (see --preprocess). Used for fidelity and "
                   "by the wanda/flap/obspa criteria.")
@click.option("--calib-random", type=int, default=None, metavar="N",
              help="Calibrate wanda/flap/obspa on N seeded random inputs (when no --calib).")
@click.option("--calib-text", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, metavar="FILE",
              help="Language models: calibrate on this text, tokenized with --tokenizer and cut "
                   "into --seq-len token windows (also scores blocks for --drop-blocks).")
@click.option("--tokenizer", type=click.Path(exists=True, path_type=Path), default=None,
              help="For --calib-text: a tokenizer.json file or a tokenizer folder.")
@click.option("--seq-len", type=int, default=128, show_default=True,
              help="For --calib-text: tokens per calibration window.")
@click.option("--preprocess", type=click.Choice(["imagenet", "none"]), default="imagenet",
              show_default=True,
              help="For --calib DIR: resize the shorter side + center crop to the input H×W, "
                   "scale to [0,1]; imagenet also normalizes with the ImageNet mean/std.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Integer labels of the calibration samples, one per line.")
@click.option("--compensate", type=click.Choice(["auto", "none", "flap", "obspa"]),
              default="auto", show_default=True,
              help="Weight/bias compensation of the pruned units' consumers (auto: obspa for "
                   "obspa, bias-only for flap, none otherwise). Needs calibration statistics.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a self-contained HTML report here.")
@click.option("--benchmark", is_flag=True, help="Measure ORT latency before/after (report).")
@click.option("--threads", type=int, default=0, show_default=True,
              help="ORT intra-op threads for --benchmark (0: onnxruntime default).")
@click.option("--repeats", type=int, default=50, show_default=True,
              help="Timed runs per model for --benchmark.")
@click.option("--max-drop", type=float, default=None,
              help="Gate: exit 1 when fidelity drop exceeds X (1 - top-1 agreement on --calib "
                   "data for classifiers, else 1 - cosine).")
@click.option("--min-speedup", type=float, default=None,
              help="Gate (implies --benchmark): exit 1 when measured speedup < Y.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def prune_cmd(model, ratio, output, criterion, dims, drop_blocks, global_rank, target_params,
              round_to, min_keep, protect, report, external_data, seed, quiet, as_json, calib,
              calib_random, calib_text, tokenizer, seq_len, preprocess, labels, compensate,
              html_out, benchmark, threads, repeats, max_drop, min_speedup, debug):
    """Prune MODEL and write a smaller, valid ONNX model."""
    from ..pipeline.pipeline import prune

    setup_logging(debug)

    out = output or default_output(model)
    measure = bool(calib or html_out or benchmark or max_drop is not None
                   or min_speedup is not None)
    try:
        check_outputs(model, out, tuple(p for p in (report, html_out) if p))
        res = prune(str(model), ratio=ratio, criterion=criterion, global_rank=global_rank,
                    target_params=target_params,
                    round_to=round_to, min_keep=min_keep, protect=list(protect), seed=seed,
                    dims=dims, drop_blocks=drop_blocks, progress=_progress(quiet or as_json),
                    in_memory=measure, defer_validation=not measure, **_calib_options(criterion, calib, calib_random,
                                                        preprocess, labels, compensate,
                                                        calib_text, tokenizer, seq_len,
                                                        drop_blocks))
        gates = []
        if measure and calib is not None and calib.is_dir():
            calib = _images_npz(res, model, calib, preprocess)
        if measure:
            gates = _measure(res, model, calib, html_out, benchmark or min_speedup is not None,
                             threads, repeats, max_drop, min_speedup, seed, quiet or as_json)
        res.save(out, external_data=external_data)
        if report:
            atomic_write_text(report, json.dumps(res.report, indent=2) + "\n")
        if html_out:
            from ..report.html import write as write_html

            write_html(res.report, html_out)
    except UserError as e:
        fail(str(e), debug)
    except ValidationError as e:
        fail(f"the pruned model failed validation, nothing written: {e}", debug)
    r = res.report
    if as_json:
        click.echo(json.dumps(r, indent=2))
    elif not quiet:
        from ..report.summary import summary, summary_lines

        click.echo("\n".join([summary(r)] + summary_lines(r)))
    _exit_on_gates(gates)


def _calib_options(criterion, calib, calib_random, preprocess, labels, compensate,
                   calib_text=None, tokenizer=None, seq_len=128, drop_blocks=0) -> dict:
    """prune() options for calibration: passed on when something reads the samples (a
    data-aware criterion, compensation, block scoring); prune() checks them."""
    from ..pipeline.options import CALIB_CRITERIA

    opts = {} if compensate == "auto" else {"compensate": compensate}
    if not (criterion in CALIB_CRITERIA or "compensate" in opts or drop_blocks):
        return opts
    source = calib if calib is not None else calib_random
    if source is not None:
        opts.update(calib=str(source) if isinstance(source, Path) else source,
                    preprocess=preprocess)
    if calib_text is not None:
        opts.update(calib_text=str(calib_text), seq_len=seq_len,
                    tokenizer=str(tokenizer) if tokenizer is not None else None)
    if source is not None or calib_text is not None:
        opts["labels"] = str(labels) if labels else None
    return opts


def _images_npz(res, model, folder: Path, preprocess: str) -> Path:
    """Fidelity reads .npz files: a folder of images is converted once (temp file)."""
    import tempfile

    import numpy as np

    from ..calibration.images import load_image_dir

    arrays = load_image_dir(folder, res.model, preprocess)  # same inputs as the original
    path = Path(tempfile.mkdtemp(prefix="graphprune_calib_")) / f"{folder.name}.npz"
    np.savez(path, **arrays)
    return path


def _measure(res, model, calib, html_out, benchmark, threads, repeats, max_drop, min_speedup,
             seed, quiet) -> list[dict]:
    """Fidelity (and latency) into the report, then the gates; see graphprune.evaluate."""
    from ..pipeline.measure import check_gates, evaluate_result
    from ..progress import progress_enabled

    evaluate_result(res, str(model), calib_path=calib, benchmark=benchmark, threads=threads,
                    repeats=repeats, seed=seed, progress=progress_enabled(quiet))
    if html_out:
        from ..report.html import attach_unit_scores

        attach_unit_scores(res.report, res.scores)
    gates = check_gates(res.report, max_drop, min_speedup)
    if gates:
        res.report["gates"] = gates
    return gates


def _exit_on_gates(gates: list[dict]) -> None:
    """A failed CI gate: the model and report are written; one line on stderr, exit code 1."""
    from ..pipeline.measure import gate_failure_line

    line = gate_failure_line(gates)
    if line:
        click.echo(line, err=True)
        sys.exit(EXIT_GATE)

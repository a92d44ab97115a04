"""`graphprune MODEL.onnx [OUT.onnx] --ratio 0.3 ...`: prune a model and write it, with its
reports. The options that say how to prune are shared with `graphprune batch`."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..criteria import CRITERIA
from ..errors import UserError, ValidationError
from ..ir.files import check_outputs
from ..ir.writer import OutputSet
from ..pipeline.folder import check_out_dir, make_out_dir, model_file, stage_side_files
from .app import EXIT_GATE, emit, fail, main, setup_logging
from .recipe import config_option, deprecated_global, merge_global

_FILE = click.Path(dir_okay=False, path_type=Path)
# output paths stay the strings given: `-o newdir/` must be refused, not become `newdir`
_OUT = click.Path(dir_okay=False)

# how to prune: shared by `prune` and `batch` (the names are those of graphprune.prune())
PRUNE_OPTIONS = [
    click.option("--ratio", type=float, default=0.3, show_default=True,
                 help="Fraction of prunable units (channels) to remove."),
    click.option("--criterion", type=click.Choice(sorted(CRITERIA)), default=None,
                 help="Importance criterion (default magnitude; with --plan, the plan's)."),
    click.option("--dims", default="channels,heads,mlp,hidden", show_default=True,
                 help="Kinds of groups to prune: channels (convolutions), heads (attention "
                      "heads; a GQA kv head goes with its query heads), mlp (transformer "
                      "intermediate width), hidden (the residual stream); head_dims instead "
                      "of heads: the same feature positions of every head (queries and keys "
                      "together, rotary pairs together; values and outputs on their own)."),
    click.option("--drop-blocks", type=int, default=0, show_default=True,
                 help="Remove the N residual sub-blocks (attention/MLP, identity-shortcut "
                      "blocks) that change the stream least (1 - cosine on random inputs)."),
    click.option("--global-rank", "global_rank", is_flag=True,
                 help="Rank units across all groups (normalized) instead of a uniform ratio "
                      "per group."),
    click.option("--global", "global_alias", is_flag=True, hidden=True,
                 callback=deprecated_global),
    click.option("--target-params", type=float, default=None, metavar="F",
                 help="Remove this fraction of the model's parameters (replaces --ratio): the "
                      "same fraction of every group that comes closest to it, or with "
                      "--global-rank units of all groups ranked together. Heads go as whole "
                      "GQA groups."),
    click.option("--target-macs", type=float, default=None, metavar="F",
                 help="Remove this fraction of the model's MACs (replaces --ratio), like "
                      "--target-params."),
    click.option("--ratio-for", "ratio_for", multiple=True, metavar="PATTERN=R",
                 help="Ratio R for the groups owned by nodes/tensors matching PATTERN (fnmatch, "
                      "or op:Conv for an op type); the last matching pattern wins; repeatable."),
    click.option("--max-ratio", type=float, default=None, metavar="R",
                 help="No group loses more than R of its units (caps --global-rank and the "
                      "--target-* searches)."),
    click.option("--round-to", type=int, default=1, show_default=True,
                 help="Keep widths a multiple of N (hardware friendly)."),
    click.option("--min-keep", type=int, default=1, show_default=True,
                 help="Never keep fewer than N units in a group."),
    click.option("--protect", multiple=True, metavar="PATTERN",
                 help="Freeze groups touching a node/tensor whose name matches (fnmatch, or "
                      "op:TYPE); repeatable."),
    click.option("--protect-op", "protect_op", multiple=True, metavar="OPTYPE",
                 help="Freeze groups touching a node of this op type; repeatable."),
    click.option("--allow-unmatched", is_flag=True,
                 help="A --protect/--protect-op/--ratio-for pattern that matches nothing is "
                      "not an error."),
    click.option("--steps", type=int, default=1, show_default=True,
                 help="Reach the target in N prune -> compensate rounds, re-scoring the "
                      "partly pruned model each time."),
    click.option("--plan", "plan", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 default=None, help="Apply this saved or edited plan (--save-plan) instead of "
                                    "scoring and selecting."),
    click.option("--input-shapes", default=None, metavar="NAME:DxD...,...",
                 help="Static dims for symbolic input dims (shape inference, MACs, random "
                      "validation inputs, benchmarks), e.g. input:1x3x224x224 (default: "
                      "the --calib data's shapes, sizes the weights fix, guesses)."),
    click.option("--input-values", default=None, metavar="NAME=VALUE,...",
                 help="Values of inputs that need real ones (a sample rate: sr=16000), "
                      "broadcast to the input's shape, for every ONNX Runtime run."),
    click.option("--provider", default="CPUExecutionProvider", show_default=True,
                 help="ONNX Runtime execution provider for calibration, validation and "
                      "benchmark (cpu, cuda, tensorrt, openvino, coreml or a full name)."),
    click.option("--external-data", is_flag=True,
                 help="Store weights in a .data file beside the model."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed for random inputs/criteria."),
    click.option("--calib", "calib", type=click.Path(exists=True, path_type=Path), default=None,
                 help="Calibration/fidelity inputs: .npz with one array per model input "
                      "(samples on axis 0), or a folder of images (see --preprocess)."),
    click.option("--calib-random", type=int, default=None, metavar="N",
                 help="Calibrate the data-aware criteria on N seeded random inputs."),
    click.option("--calib-text", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 default=None, metavar="FILE",
                 help="Language models: calibrate on this text, tokenized with --tokenizer and "
                      "cut into --seq-len token windows (also scores blocks for --drop-blocks)."),
    click.option("--tokenizer", type=click.Path(exists=True, path_type=Path), default=None,
                 help="For --calib-text: a tokenizer.json file or a tokenizer folder."),
    click.option("--seq-len", type=int, default=128, show_default=True,
                 help="For --calib-text: tokens per calibration window."),
    click.option("--preprocess", type=click.Choice(["imagenet", "none"]), default="imagenet",
                 show_default=True,
                 help="For --calib DIR: resize the shorter side + center crop to the input H×W, "
                      "scale to [0,1]; imagenet also normalizes with the ImageNet mean/std."),
    click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 default=None, help="Integer labels of the calibration samples, one per line."),
    click.option("--compensate", type=click.Choice(["auto", "none", "flap", "obspa"]),
                 default="auto", show_default=True,
                 help="Weight/bias compensation of the pruned units' consumers (auto: obspa for "
                      "obspa, bias-only for flap, none otherwise). Needs calibration."),
    click.option("--reconstruct/--no-reconstruct", default=None,
                 help="Refit every consumer of a removed unit in graph order, by least squares "
                      "on the partly pruned model's activations against the original's outputs "
                      "(replaces the one-shot compensation). Default: on when calibration arrays "
                      "(--calib, --calib-random) reach a data-aware criterion (wanda, flap, "
                      "obspa, amp, lrp) and --compensate is auto or obspa; off with "
                      "--calib-text."),
    click.option("--rotate/--no-rotate", default=None,
                 help="With hidden in --dims: turn the residual stream to the principal axes "
                      "of its normalized calibration activations first (an exact rewrite: "
                      "norm scales folded into the weights that read them), so hidden-size "
                      "pruning removes the least used directions. Needs calibration data; "
                      "RMS-norm decoders only (the report says why not elsewhere). Default: "
                      "off."),
    click.option("--correct", "correct", type=click.Choice(["auto", "meanvar", "mean", "none"]),
                 default="auto", show_default=True,
                 help="Match every changed layer's per-channel output mean (and variance) to "
                      "the original's on the calibration data, folded into its weights and "
                      "bias; interleaved with the reconstruction when both run (auto: none)."),
    click.option("--allocate/--no-allocate", default=None,
                 help="With --target-params: widths per group from measured sensitivity "
                      "instead of uniform. Default: on for --target-params without "
                      "--global-rank or --ratio-for."),
    click.option("--allocate-by", "allocate_by",
                 type=click.Choice(["auto", "measured", "obs"]), default="auto",
                 show_default=True,
                 help="How allocation measures a group's sensitivity: measured (the model's "
                      "outputs on 8 calibration samples with the group cut at 3 widths: KL "
                      "of the next-token distribution for --calib-text, relative error "
                      "otherwise; needs calibration data), obs (each consumer's error after "
                      "its least-squares refit; calibrated or data-free). auto: measured "
                      "with --calib-text, else obs."),
    click.option("--benchmark", is_flag=True, help="Measure ORT latency before/after (report)."),
    click.option("--threads", type=int, default=0, show_default=True,
                 help="ORT intra-op threads for --benchmark (0: onnxruntime default)."),
    click.option("--repeats", type=int, default=50, show_default=True,
                 help="Timed runs per model for --benchmark."),
    click.option("--max-drop", type=float, default=None,
                 help="Gate: exit 1 when fidelity drop exceeds X (1 - top-1 agreement on "
                      "--calib data for classifiers, else 1 - cosine)."),
    click.option("--min-speedup", type=float, default=None,
                 help="Gate (implies --benchmark): exit 1 when measured speedup < Y."),
    click.option("--whole-blocks", "whole_blocks", is_flag=True,
                 help="Block-quantized weights (MatMulNBits) lose only whole quantization "
                      "blocks of their input axis (byte-exact) instead of single positions "
                      "whose blocks are quantized again."),
]


def prune_options(fn):
    for opt in reversed(PRUNE_OPTIONS):
        fn = opt(fn)
    return fn


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
@config_option("prune")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("out", type=_OUT, required=False)
@click.option("-o", "--output", type=_OUT, default=None,
              help="Output file (default: MODEL.pruned.onnx beside the input; or give it as "
                   "the second argument).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a complete model folder instead: the model under its input name, "
                   "the genai_config.json / config.json beside the input rewritten to the "
                   "pruned sizes and the input folder's other files (tokenizer, ...) copied.")
@prune_options
@click.option("--report", type=_OUT, default=None, help="Write the JSON report here.")
@click.option("--html", "html_out", type=_OUT, default=None,
              help="Write a self-contained HTML report here.")
@click.option("--save-plan", type=_OUT, default=None,
              help="Write the plan (every group's kept units, the model's fingerprint) here.")
@click.option("--quiet", is_flag=True, help="No progress messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def prune_cmd(model, out, output, out_dir, report, html_out, save_plan, quiet, as_json, debug,
              **options):
    """Prune MODEL (a model file or folder) and write a smaller, valid ONNX model (to OUT,
    -o, or a model folder with --out-dir)."""
    setup_logging(debug)
    t0 = time.perf_counter()
    merge_global(options)
    if out is not None and output is not None and out != output:
        fail(f"two outputs given: {out} and -o {output}", debug)
    try:
        model = model_file(model)
        if out_dir is not None and (out or output):
            raise UserError("give either OUT / -o or --out-dir, not both")
        out = str(out_dir / model.name) if out_dir is not None else (
            out or output or str(default_output(model)))
        r, gates = run_prune(model, out, report=report, html_out=html_out, save_plan=save_plan,
                             progress=_progress(quiet or as_json), quiet=quiet or as_json,
                             out_dir=out_dir, **options)
    except UserError as e:
        fail(str(e), debug)
    except ValidationError as e:
        fail(f"the pruned model failed validation, nothing written: {e}", debug)
    if as_json:
        emit(json.dumps(r, indent=2))
    elif not quiet:
        from ..report.summary import summary, summary_lines

        emit("\n".join([summary(r, time.perf_counter() - t0)] + summary_lines(r)))
    _exit_on_gates(gates)


def run_prune(model: Path, out, report=None, html_out=None, save_plan=None,
              progress=None, quiet: bool = True, out_dir: Path | None = None, *, ratio,
              criterion, dims, drop_blocks, global_rank, target_params, target_macs,
              ratio_for, max_ratio, round_to, min_keep, protect, protect_op, allow_unmatched,
              steps, plan, input_shapes, input_values, provider, external_data, seed, calib,
              calib_random, calib_text, tokenizer, seq_len, preprocess, labels, compensate,
              benchmark, threads, repeats, max_drop, min_speedup,
              whole_blocks=False, reconstruct=None, rotate=None, correct="auto",
              allocate=None, allocate_by="auto") -> tuple[dict, list]:
    """One prune as the command line runs it: check every option and output path, read and
    check the calibration data, prune, measure, then write the model, its data file, the
    configuration and tokenizer files beside it (a model folder with `out_dir`) and the
    reports together (see `graphprune.ir.writer`). Returns the report and the gates (also
    what a `graphprune batch` job returns)."""
    from ..pipeline.pipeline import prune

    measure = bool(calib or html_out or benchmark or max_drop is not None
                   or min_speedup is not None)
    _check_numbers(max_drop, min_speedup, calib_random, seq_len, threads, repeats)
    others = tuple(p for p in (report, html_out, save_plan) if p)
    if out_dir is not None:
        check_out_dir(model, out_dir)
    if out_dir is not None and not out_dir.exists():  # made when the files are committed
        inputs = check_outputs(model, out_dir.parent / f".{model.name}", others)
    else:
        inputs = check_outputs(model, out, others)
    cal = _load_calib(model, calib, preprocess, labels, seed) if calib is not None else None
    if criterion is None and plan is None:
        criterion = "magnitude"
    res = prune(str(model), ratio=ratio, criterion=criterion, global_rank=global_rank,
                target_params=target_params, target_macs=target_macs,
                ratio_for=list(ratio_for), max_ratio=max_ratio, protect_op=list(protect_op),
                allow_unmatched=allow_unmatched, steps=steps,
                plan=str(plan) if plan else None, input_shapes=input_shapes,
                input_values=input_values,
                feeds=str(calib) if calib is not None and calib.is_file() else None,
                provider=provider, round_to=round_to, min_keep=min_keep,
                protect=list(protect), seed=seed, dims=dims, drop_blocks=drop_blocks,
                progress=progress, defer_validation=not measure,
                requantize=not whole_blocks,
                reconstruct=reconstruct, rotate=rotate,
                allocate=allocate if allocate is False or allocate_by == "auto" else allocate_by,
                correct=None if correct == "auto" else correct,
                **_calib_options(criterion, cal, calib_random, preprocess, labels,
                                 compensate, calib_text, tokenizer, seq_len, drop_blocks,
                                 steps, bool(reconstruct) or bool(rotate)
                                 or correct not in ("auto", "none")))
    gates = []

    def measure_written(staged: str) -> None:
        # the staged files, before anything is renamed into place: nothing is written when a
        # measurement fails, and a big model's rewritten weights are no longer held in memory
        gates[:] = _measure(res, model, cal, calib, html_out,
                            benchmark or min_speedup is not None, threads, repeats, max_drop,
                            min_speedup, seed, quiet, provider, input_shapes, staged)

    # every artifact is rendered and staged first; they land together or not at all
    with OutputSet(protect=inputs) as outputs:
        if out_dir is not None:
            make_out_dir(outputs, out_dir)
        res.save(out, external_data=external_data, outputs=outputs,
                 check=measure_written if measure else None)
        stage_side_files(res, model, Path(out), outputs, folder=out_dir is not None)
        if report:
            outputs.add_text(report, json.dumps(res.report, indent=2) + "\n")
        if save_plan:
            outputs.add_text(save_plan, res.prune_plan.dumps())
        if html_out:
            from ..report.html import render

            outputs.add_text(html_out, render(res.report))
    return res.report, gates


def _check_numbers(max_drop, min_speedup, calib_random, seq_len, threads, repeats) -> None:
    """Numeric options checked before any work, also those only some runs use (PruneOptions
    checks the rest)."""
    from ..calibration.checks import MAX_RANDOM_SAMPLES
    from ..calibration.text import MAX_CALIB_TOKENS
    from ..pipeline.options import check_gate_limits
    from ..runtime import bench

    check_gate_limits(max_drop, min_speedup)
    bench.check_counts(seq_len=(seq_len, 2, MAX_CALIB_TOKENS))
    if calib_random is not None:
        bench.check_counts(calib_random=(calib_random, 1, MAX_RANDOM_SAMPLES))
    bench.check_counts(threads=(threads, 0, bench.MAX_THREADS),
                       repeats=(repeats, 1, bench.MAX_RUNS))


def _load_calib(model, calib: Path, preprocess, labels, seed):
    """--calib read and checked against the model's inputs before any pruning work."""
    from ..pipeline.measure import load_inputs

    return load_inputs(model, calib, preprocess, str(labels) if labels else None, seed)


def _calib_options(criterion, calib, calib_random, preprocess, labels, compensate,
                   calib_text=None, tokenizer=None, seq_len=128, drop_blocks=0,
                   steps=1, levers=False) -> dict:
    """prune() options for calibration: passed on when something reads the samples (a
    data-aware criterion, compensation, block scoring, `levers`: --reconstruct or --correct
    asked for); prune() checks them. `calib`: the
    `Calibration` read from --calib (labels included), or None."""
    from ..pipeline.options import CALIB_CRITERIA

    opts = {} if compensate == "auto" else {"compensate": compensate}
    if not (criterion in CALIB_CRITERIA or "compensate" in opts or drop_blocks or levers):
        return opts
    if calib is not None:
        opts.update(calib=calib, preprocess=preprocess)
    elif calib_random is not None:
        opts.update(calib=calib_random, preprocess=preprocess,
                    labels=str(labels) if labels else None)
    if calib_text is not None:
        opts.update(calib_text=str(calib_text), seq_len=seq_len,
                    tokenizer=str(tokenizer) if tokenizer is not None else None,
                    labels=str(labels) if labels else None)
    return opts


def _measure(res, model, cal, calib, html_out, benchmark, threads, repeats, max_drop,
             min_speedup, seed, quiet, provider="CPUExecutionProvider",
             input_shapes=None, written: str | None = None) -> list[dict]:
    """Fidelity (and latency) of the written model (`written`: its staged path) into the
    report, then the gates; see graphprune.pipeline.measure.evaluate_result. `cal`: the
    checked --calib data (`calib`, its path, names it in the report)."""
    from ..pipeline.measure import check_gates, evaluate_result
    from ..progress import progress_enabled

    evaluate_result(res, str(model), benchmark=benchmark, threads=threads, repeats=repeats,
                    seed=seed, progress=progress_enabled(quiet), provider=provider,
                    input_shapes=input_shapes,
                    calib=cal.feeds if cal is not None else None,
                    calib_name=Path(calib).name if calib is not None else None,
                    pruned=written)
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

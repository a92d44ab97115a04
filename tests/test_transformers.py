"""Transformers exported with both exporters: heads (MHA and GQA), MLP width, hidden size and
block dropping, with dynamic batch/sequence sizes still working after pruning."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.runtime import session as ortb
from helpers import run, zero_consumers

TX = Path(__file__).resolve().parent.parent / "models" / "onnx" / "tx"
FILES = sorted(TX.glob("*.onnx"))
IDS = [p.name[:-5] for p in FILES]
CAUSAL = [p for p in FILES if p.name.startswith(("gpt2", "llama"))]


def feeds(model, batch, seq, seed=0):
    sess = ortb.session(model)
    out = {}
    rng = np.random.default_rng(seed)
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else (batch if k == 0 else seq)
                 for k, d in enumerate(i.shape)]
        if "int" in i.type:
            out[i.name] = rng.integers(0, 100, size=shape).astype(np.int64)
        else:
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def assert_equivalent_sizes(model, res, sizes=((1, 5), (3, 11)), atol=1e-4):
    """Pruned == consumer-zeroed original, at sequence lengths other than the export's."""
    oracle = zero_consumers(model, res)
    for batch, seq in sizes:
        f = feeds(model, batch, seq)
        ref, out = run(oracle, f), run(res.model, f)
        for k in ref:
            assert out[k].shape == ref[k].shape
            np.testing.assert_allclose(out[k], ref[k], atol=atol, rtol=1e-4, err_msg=k)


def runs_at_sizes(model, res, sizes=((1, 5), (3, 11))):
    for batch, seq in sizes:
        f = feeds(model, batch, seq)
        ref, out = run(model, f), run(res.model, f)
        for k in ref:
            assert out[k].shape == ref[k].shape


@pytest.fixture(scope="module", params=FILES, ids=IDS)
def tx(request):
    return request.param.name[:-5], onnx.load(str(request.param))


def test_bundled_transformers_present():
    names = {p.name.split(".")[0] for p in FILES}
    assert {"bert", "gpt2", "llama_gqa", "vit"} <= names
    assert {p.name.split(".")[1] for p in FILES} == {"legacy", "dynamo"}


@pytest.mark.parametrize("dims", ["heads", "mlp", "heads,mlp"])
def test_heads_and_mlp_equal_consumer_zeroing(tx, dims):
    name, model = tx
    res = graphprune.prune(model, ratio=0.5, dims=dims)
    kinds = {g["kind"] for g in res.report["groups"]
             if g["frozen_reason"] is None and g["size_after"] < g["size_before"]}
    want = {"heads": {"head"}, "mlp": {"mlp"}, "heads,mlp": {"head", "mlp"}}[dims]
    assert kinds == want, (name, kinds)
    r = res.report
    assert r["params"]["after"] < r["params"]["before"]
    assert r["macs"]["after"] < r["macs"]["before"]
    assert_equivalent_sizes(model, res)


def test_ratio_zero_identical(tx):
    _, model = tx
    res = graphprune.prune(model, ratio=0.0)
    f = feeds(model, 2, 7)
    a, b = run(model, f), run(res.model, f)
    for k in a:
        assert np.array_equal(a[k], b[k])


def test_all_dims_together_valid(tx):
    _, model = tx
    res = graphprune.prune(model, ratio=0.3)
    onnx.checker.check_model(res.model, full_check=True)
    runs_at_sizes(model, res)
    assert res.report["params"]["after"] < res.report["params"]["before"]


@pytest.mark.parametrize("path", CAUSAL, ids=[p.name[:-5] for p in CAUSAL])
def test_hidden_size_pruned_in_causal_lms(path):
    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.3, dims="hidden")
    hidden = [g for g in res.report["groups"] if g["kind"] == "hidden"]
    assert len(hidden) == 1, "the residual stream is one group spanning every block"
    assert hidden[0]["size_before"] == 64 and hidden[0]["size_after"] < 64
    runs_at_sizes(model, res)
    assert res.report["fidelity"]["value"] > 0.5


def test_head_pruning_shrinks_projections_by_whole_heads():
    """BERT (hidden 64, 4 heads of 16, 2 layers): removing half the heads leaves q/k/v
    projections [64, 32] and output projections [32, 64] in every layer, nothing else."""
    model = onnx.load(str(TX / "bert.dynamo.onnx"))
    res = graphprune.prune(model, ratio=0.5, dims="heads")
    before = sorted(tuple(t.dims) for t in model.graph.initializer if len(t.dims) == 2)
    after = sorted(tuple(t.dims) for t in res.model.graph.initializer if len(t.dims) == 2)
    assert after.count((64, 32)) == before.count((64, 32)) + 6
    assert after.count((32, 64)) == before.count((32, 64)) + 2
    assert before.count((64, 64)) - after.count((64, 64)) == 8
    r = res.report
    assert r["macs"]["after"] < r["macs"]["before"]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_gqa_keeps_query_heads_with_their_kv_head(exporter):
    path = TX / f"llama_gqa.{exporter}.onnx"
    if not path.exists():
        pytest.skip(f"{path.name} not bundled")
    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.5, dims="heads")
    heads = [g for g in res.report["groups"] if g["kind"] == "head"]
    assert heads and all(g["size_before"] == 2 for g in heads), "units are the 2 kv heads"
    assert all(g["size_after"] == 1 for g in heads)
    # query projection keeps 1 kv head × 2 query heads × head dim 16 = 32 outputs of 64
    shapes = {t.name: list(t.dims) for t in res.model.graph.initializer}
    orig = {t.name: list(t.dims) for t in model.graph.initializer}
    changed = {n: (orig[n], shapes[n]) for n in shapes if n in orig and shapes[n] != orig[n]}
    widths = sorted({d for o, s in changed.values() for d, e in zip(s, o) if d != e})
    assert 32 in widths and 16 in widths  # q/o: 2 query heads kept; k/v: 1 kv head kept
    assert_equivalent_sizes(model, res)


def test_dynamo_head_count_constant_rewritten():
    """The dynamo export computes [batch, kv_heads, n_rep, seq, 16] at run time; the kv-head
    entry is a constant inside that computation and must be patched."""
    model = onnx.load(str(TX / "llama_gqa.dynamo.onnx"))
    res = graphprune.prune(model, ratio=0.5, dims="heads")
    patches = [n for n in res.model.graph.node if n.op_type == "Where" and "patched" in n.name]
    assert patches
    assert res.report["summary"]["shape_values_pinned"] >= 0


@pytest.mark.parametrize("path", [p for p in FILES if "dynamo" in p.name],
                         ids=[p.name[:-5] for p in FILES if "dynamo" in p.name])
def test_drop_blocks(path):
    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.0, drop_blocks=1)
    blocks = res.report["blocks"]
    assert sum(b["dropped"] for b in blocks) == 1
    assert {b["kind"] for b in blocks} <= {"attention", "mlp", "block"}
    assert res.report["params"]["after"] < res.report["params"]["before"]
    runs_at_sizes(model, res)


def test_round_to_leaves_head_counts_alone():
    model = onnx.load(str(TX / "bert.dynamo.onnx"))
    r = graphprune.prune(model, ratio=0.5, dims="heads,mlp", round_to=8).report
    heads = [g for g in r["groups"] if g["kind"] == "head"]
    mlp = [g for g in r["groups"] if g["kind"] == "mlp" and g["frozen_reason"] is None]
    assert heads and all(g["size_after"] == 2 for g in heads)
    assert mlp and all(g["size_after"] % 8 == 0 for g in mlp)

"""Head-dimension pruning (`--dims head_dims`): the same feature positions of every head go,
head counts stay. Checked on the bundled transformers of both exporters against the
consumer-zeroed original at other batch and sequence sizes, with ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.errors import UserError
from helpers import run
from test_transformers import assert_equivalent_sizes, feeds

TX = Path(__file__).resolve().parent.parent / "models" / "onnx" / "tx"
FILES = sorted(TX.glob("*.onnx"))
LLAMA = [p for p in FILES if p.name.startswith("llama")]


def _head_dim_groups(res):
    return [g for g in res.report["groups"] if g["kind"] == "head_dim"]


@pytest.mark.parametrize("path", FILES, ids=[p.name[:-5] for p in FILES])
def test_head_dims_equal_consumer_zeroing(path):
    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.5, dims="head_dims")
    shrunk = [g for g in _head_dim_groups(res) if g["size_after"] < g["size_before"]]
    assert shrunk, [(g["name"], g["frozen_reason"]) for g in _head_dim_groups(res)]
    assert {g["kind"] for g in res.report["groups"]
            if g["size_after"] < g["size_before"]} == {"head_dim"}
    assert res.report["params"]["after"] < res.report["params"]["before"]
    assert_equivalent_sizes(model, res, sizes=((1, 5), (2, 9), (3, 11)))


@pytest.mark.parametrize("path", LLAMA, ids=[p.name[:-5] for p in LLAMA])
def test_rotary_pairs_go_together_and_heads_stay(path):
    """LLaMA: queries and keys lose the same positions, i together with i + D/2 (the rotary
    pair), in every head; values lose positions of their own; the head counts the reshapes
    use are unchanged, so each projection shrinks by a whole number of positions per head."""
    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.5, dims="head_dims,mlp", criterion="magnitude")
    groups = _head_dim_groups(res)
    qk = [g for g in groups if any("rotary" in m or "inv_freq" in m for m in g["members"])]
    assert len(qk) == 1, [g["name"] for g in groups]
    half = qk[0]["size_before"]  # the rotary table holds one entry per pair
    kept_pairs = np.asarray(qk[0]["kept"])
    assert 0 < len(kept_pairs) < half
    # a query projection's kept output columns: pair entries p and p + D/2 of every head
    dg, plan = res.graph, res.plan
    grp = dg.groups[qk[0]["id"]]
    cols = [m for m in grp.members if m.role == "out" and not m.tensor.startswith(
        ("/model/model/rotary", "model.model.rotary"))]
    assert cols
    d = 2 * half
    for m in cols:
        units = grp.unit_of[(m.tensor, m.axis)]
        per_head = units.reshape(-1, d)
        assert (per_head == per_head[:1]).all()  # the same positions in every head
        assert (per_head[:, :half] == per_head[:, half:]).all()  # i with i + D/2
        kept = np.isin(per_head[0], plan.keep[qk[0]["id"]])
        assert kept.sum() == 2 * len(kept_pairs)
    values = [g for g in groups if g is not qk[0]]
    assert values and all(g["size_after"] < g["size_before"] for g in values)


def test_pruned_llama_runs_with_other_sizes_in_ort():
    path = TX / "llama_gqa.dynamo.onnx"
    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.25, dims="head_dims,mlp")
    onnx.checker.check_model(res.model, full_check=True)
    for batch, seq in ((1, 1), (4, 13)):
        f = feeds(model, batch, seq)
        a, b = run(model, f), run(res.model, f)
        for k in a:
            assert a[k].shape == b[k].shape
            assert np.isfinite(b[k]).all()


def test_heads_and_head_dims_exclude_each_other():
    model = onnx.load(str(LLAMA[0]))
    with pytest.raises(UserError, match="exclude each other"):
        graphprune.prune(model, ratio=0.3, dims="heads,head_dims")


def test_head_dims_cli_exit_2_when_combined_with_heads(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out.onnx"
    r = subprocess.run([sys.executable, "-m", "graphprune.cli.main", str(LLAMA[0]), "--dims",
                        "heads,head_dims", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "exclude each other" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_head_dims_without_attention_is_nothing_to_prune():
    """A CNN has no heads: head_dims alone leaves every channel group frozen."""
    model = onnx.load(str(TX.parent / "resnet_tiny.legacy.onnx"))
    res = graphprune.prune(model, ratio=0.5, dims="head_dims")
    assert res.report["params"]["after"] == res.report["params"]["before"]


def _constant_weight_mlp():
    """x [N, 4] → MatMul W1 (a Constant node) → Relu → MatMul W2 (no bias): compensation
    adds a bias node after the second MatMul, and the rewrite must still slice W1."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1")),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                          [numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("reconstruct", [False, True])
def test_constant_node_weights_sliced_after_a_bias_is_added(reconstruct):
    model = _constant_weight_mlp()
    res = graphprune.prune(model, ratio=0.5, criterion="obspa", calib=32,
                           reconstruct=reconstruct)
    comp = res.report["compensation"]
    assert any(l.get("bias", "").startswith("added") for l in comp["layers"]), comp
    shapes = {n.output[0]: tuple(n.attribute[0].t.dims) for n in res.model.graph.node
              if n.op_type == "Constant"}
    assert shapes["w1"] == (4, 4)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    assert run(res.model, {"x": x})["y"].shape == (5, 3)


@pytest.mark.parametrize("path", FILES, ids=[p.name[:-5] for p in FILES])
def test_masked_model_computes_what_the_head_dim_pruned_model_computes(path):
    """The masked model that reconstruction, correction and the measured allocation run (full
    widths, removed slices zeroed) cuts query/key positions at their producers, so it computes
    what the pruned model computes."""
    from graphprune.pipeline.pipeline import analyze_model
    from graphprune.runtime.segments import tap_model
    from graphprune.transforms.masking import masked_overrides

    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.5, dims="head_dims")
    view, _ = analyze_model(model, dims="head_dims")
    out = model.graph.output[0].name
    f = feeds(model, 2, 7)
    masked = run(tap_model(model, [out], masked_overrides(view, res.graph, res.plan)), f)[out]
    np.testing.assert_allclose(run(res.model, f)[out], masked, rtol=1e-4, atol=1e-4)

"""Allocation from sensitivity measured at the model's outputs (transforms/sensitivity.py) and
the weight probe that runs those measurements (runtime/weight_probe.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.analysis.cost import unit_param_costs
from graphprune.runtime.taps import TapRunner
from graphprune.transforms.sensitivity import kl_error, relative_error
from test_llm import LLAMA, text_file, tokenizer_file  # noqa: F401,F811 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
TX = ROOT / "models" / "onnx" / "tx"


def _two_branches(quiet: float = 0.01, seed: int = 0):
    """x → two parallel Gemm-Relu-Gemm branches of the same shape, summed; branch b's output
    is scaled by `quiet` after its last layer, where no layer-wise error sees it."""
    rng = np.random.default_rng(seed)
    inits = {"wa": rng.standard_normal((8, 6)), "wb": rng.standard_normal((8, 6)),
             "ca": rng.standard_normal((3, 8)), "cb": rng.standard_normal((3, 8)),
             "s": np.array(quiet)}
    nodes = [helper.make_node("Gemm", ["x", "wa"], ["ha"], transB=1),
             helper.make_node("Gemm", ["x", "wb"], ["hb"], transB=1),
             helper.make_node("Relu", ["ha"], ["ra"]), helper.make_node("Relu", ["hb"], ["rb"]),
             helper.make_node("Gemm", ["ra", "ca"], ["ya"], transB=1),
             helper.make_node("Gemm", ["rb", "cb"], ["yb0"], transB=1),
             helper.make_node("Mul", ["yb0", "s"], ["yb"]),
             helper.make_node("Add", ["ya", "yb"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k)
                           for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((64, 6)).astype(np.float32)
    return m, x


def _widths(res):
    return {g["name"].split("[")[0]: g["size_after"] for g in res.report["groups"]
            if g["frozen_reason"] is None}


def _output_error(model, res, x):
    ref = onnx.reference.ReferenceEvaluator(model).run(None, {"x": x})[0]
    y = onnx.reference.ReferenceEvaluator(res.model).run(None, {"x": x})[0]
    return float(np.mean((y - ref) ** 2))


def test_measured_allocation_sees_what_follows_the_last_layer():
    """Branch b barely reaches the output, but only through a Mul after its last layer: the
    measured curves take its units first; the layer-wise ones see two alike branches."""
    m, x = _two_branches()
    kw = dict(criterion="obspa", calib={"x": x}, target_params=0.3, reconstruct=False)
    measured = graphprune.prune(m, allocate="measured", **kw)
    obs = graphprune.prune(m, allocate="obs", **kw)
    assert measured.report["target"]["allocation"] == "measured"
    assert obs.report["target"]["allocation"] == "obs"
    w = _widths(measured)
    assert w["wb"] < w["wa"], w
    assert _output_error(m, measured, x) < _output_error(m, obs, x)


@pytest.mark.parametrize("path", [TX / "llama_gqa.dynamo.onnx", TX / "bert.dynamo.onnx"],
                         ids=["llama_gqa", "bert"])
def test_measured_allocation_meets_the_parameter_target(path):
    res = graphprune.prune(str(path), criterion="flap", calib=8, dims="heads,mlp",
                           target_params=0.25, allocate="measured", reconstruct=False)
    assert res.report["target"]["allocation"] == "measured"
    p = res.report["params"]
    removed, want = p["before"] - p["after"], 0.25 * p["before"]
    biggest = max(unit_param_costs(res.graph, g).max() for g in res.graph.prunable_groups())
    assert want <= removed < want + biggest, (removed, want, biggest)


def test_text_calibration_allocates_by_measurement_by_default(tokenizer_file, text_file):
    """--calib-text with a parameter target: measured curves (KL of the next-token
    distribution), the choice the report names."""
    res = graphprune.prune(str(LLAMA["dynamo"]), criterion="flap", dims="heads,mlp",
                           target_params=0.2, calib_text=str(text_file),
                           tokenizer=str(tokenizer_file), seq_len=16)
    assert res.report["target"]["allocate"] is True
    assert res.report["target"]["allocation"] == "measured"
    uniform = graphprune.prune(str(LLAMA["dynamo"]), criterion="flap", dims="heads,mlp",
                               target_params=0.2, calib_text=str(text_file),
                               tokenizer=str(tokenizer_file), seq_len=16, allocate=False)
    assert uniform.report["target"]["allocation"] is None


def test_measured_allocation_needs_calibration_data():
    with pytest.raises(graphprune.errors.UserError, match="calibration"):
        graphprune.prune(str(TX / "bert.dynamo.onnx"), target_params=0.2,
                         allocate="measured")


def test_weight_probe_swaps_only_what_it_is_given():
    m, x = _two_branches()
    cb = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "cb"))
    ca = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "ca"))
    probe = TapRunner().probe(m, {"ca": ca, "cb": cb}, {"x": x})
    ref = onnx.reference.ReferenceEvaluator(m).run(None, {"x": x})[0]
    base = np.concatenate([b["y"] for b in probe.run()])
    np.testing.assert_allclose(base, ref, rtol=1e-5, atol=1e-5)
    cut = np.concatenate([b["y"] for b in probe.run({"ca": np.zeros_like(ca)})])
    only_b = onnx.reference.ReferenceEvaluator(m).run(["yb"], {"x": x})[0]
    np.testing.assert_allclose(cut, only_b, rtol=1e-5, atol=1e-5)
    # the swap did not stick
    np.testing.assert_allclose(np.concatenate([b["y"] for b in probe.run()]), ref,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError):
        probe.run({"wa": np.zeros((8, 6), np.float32)})


def test_output_errors():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 5, 11)).astype(np.float32)
    ref = [{"y": z}]
    assert kl_error(ref, ref, ["y"]) == pytest.approx(0.0, abs=1e-6)
    assert kl_error(ref, [{"y": z + 3.0}], ["y"]) == pytest.approx(0.0, abs=1e-5)  # shift
    assert kl_error(ref, [{"y": z * 2}], ["y"]) > 0
    assert relative_error(ref, ref, ["y"]) == 0.0
    assert relative_error(ref, [{"y": z * 0}], ["y"]) == pytest.approx(
        float(np.sum(z.astype(np.float64) ** 2) / np.sum((z - z.mean()) ** 2)), rel=1e-5)


def test_measurement_points_stay_within_what_the_budget_can_take():
    """A group that owns most of the parameters (the hidden size) is measured at fractions of
    the few units the budget can take from it, not at 25/50/75 % of all of them; a group the
    budget cannot cover is measured across its whole range."""
    from graphprune.transforms import allocate as alloc
    from graphprune.transforms.sensitivity import _points

    seen = {}

    def measure(groups, orders, cands, reach):
        seen.update(groups={g.id: g for g in groups}, reach=reach, orders=orders)
        return None  # fall back to the layer-wise curves

    res = graphprune.prune(str(TX / "llama_gqa.dynamo.onnx"), criterion="magnitude",
                           dims="heads,mlp,hidden", ratio=0.0)
    dg = res.graph
    budget = 0.3 * res.report["params"]["before"]
    scores = {g.id: np.arange(g.n_units, dtype=float) for g in dg.prunable_groups()}
    alloc.allocate(dg, scores, None, budget, measure=measure)
    groups, reach = seen["groups"], seen["reach"]
    counter = alloc.ParamCount(dg, list(groups.values()), seen["orders"])
    kinds = {g.id: g.kind for g in groups.values()}
    hidden = [gid for gid, k in kinds.items() if k == "hidden"]
    assert hidden, kinds
    for gid in hidden:
        g = groups[gid]
        assert reach[gid] < g.n_units / 2, (reach[gid], g.n_units)
        assert counter.delta({}, gid, reach[gid]) >= budget
        assert counter.delta({}, gid, reach[gid] - 1) < budget
        assert max(_points(g, reach)) <= reach[gid]
    whole = [gid for gid in groups if counter.delta({}, gid, reach[gid]) < budget]
    assert whole  # groups the budget could empty: measured over their whole range
    for gid in whole:  # the largest removal allocation allows (MAX_REMOVE)
        g = groups[gid]
        assert reach[gid] >= int(alloc.MAX_REMOVE * g.n_units) - 1, (reach[gid], g.n_units)
        assert max(_points(g, reach)) >= min(0.7 * g.n_units, g.n_units - 1)

"""Allocation from measured sensitivity (transforms/allocate.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.analysis.cost import unit_param_costs

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models" / "onnx"


@pytest.mark.parametrize("name,dims,frac", [("resnet_tiny.legacy", None, 0.2),
                                            ("mobilenetv2_tiny.legacy", None, 0.35),
                                            ("tx/bert.dynamo", "heads,mlp", 0.1)])
def test_allocation_meets_the_parameter_target(name, dims, frac):
    """The report's parameter count reaches the target, overshooting by less than the
    parameters of one unit."""
    opts = {"dims": dims} if dims else {}
    res = graphprune.prune(str(MODELS / f"{name}.onnx"), criterion="obspa", calib=4,
                           target_params=frac, compensate=False, **opts)  # allocation: the default
    p = res.report["params"]
    removed, want = p["before"] - p["after"], frac * p["before"]
    biggest = max(unit_param_costs(res.graph, g).max() for g in res.graph.prunable_groups())
    assert want <= removed < want + biggest, (removed, want, biggest)
    widths = {g["size_after"] / g["size_before"] for g in res.report["groups"]
              if g["frozen_reason"] is None}
    assert len(widths) > 1  # not uniform


def test_allocation_prunes_the_redundant_layer():
    """Two parallel layers of the same size; half of one's features barely reach the output
    (tiny consumer weights): allocation takes those, uniform widths take from both."""
    rng = np.random.default_rng(0)
    ca = rng.standard_normal((3, 8))
    ca[:, 4:] *= 1e-3
    inits = {"wa": rng.standard_normal((8, 6)), "wb": rng.standard_normal((8, 6)),
             "ca": ca, "cb": rng.standard_normal((3, 8))}
    nodes = [helper.make_node("Gemm", ["x", "wa"], ["ha"], transB=1),
             helper.make_node("Gemm", ["x", "wb"], ["hb"], transB=1),
             helper.make_node("Relu", ["ha"], ["ra"]), helper.make_node("Relu", ["hb"], ["rb"]),
             helper.make_node("Gemm", ["ra", "ca"], ["ya"], transB=1),
             helper.make_node("Gemm", ["rb", "cb"], ["yb"], transB=1),
             helper.make_node("Add", ["ya", "yb"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((256, 6)).astype(np.float32)
    res = graphprune.prune(m, criterion="obspa", calib={"x": x}, target_params=0.3,
                           allocate="obs")
    after = {grp["name"].split("[")[0]: grp["size_after"] for grp in res.report["groups"]
             if grp["frozen_reason"] is None}
    assert after["wa"] == 4 and after["wb"] >= 6, after  # the four near-free ones go first
    uniform = graphprune.prune(m, criterion="obspa", calib={"x": x}, target_params=0.3,
                               allocate=False)
    assert len({grp["size_after"] for grp in uniform.report["groups"]
                if grp["frozen_reason"] is None}) == 1
    ref = onnx.reference.ReferenceEvaluator(m).run(None, {"x": x})[0]

    def err(r):
        y = onnx.reference.ReferenceEvaluator(r.model).run(None, {"x": x})[0]
        return float(np.mean((y - ref) ** 2))

    assert err(res) < err(uniform)


def test_allocation_needs_a_parameter_target_and_its_own_widths():
    path = str(MODELS / "resnet_tiny.legacy.onnx")
    with pytest.raises(graphprune.errors.UserError, match="target-params"):
        graphprune.prune(path, ratio=0.3, allocate="obs")
    with pytest.raises(graphprune.errors.UserError, match="global-rank"):
        graphprune.prune(path, target_params=0.3, allocate=True, global_rank=True)
    # global ranking asked for: no allocation by default, the units ranked together
    res = graphprune.prune(path, target_params=0.3, global_rank=True)
    assert res.report["target"]["global"]


def test_allocation_respects_max_ratio():
    res = graphprune.prune(str(MODELS / "resnet_tiny.legacy.onnx"), criterion="obspa", calib=4,
                           target_params=0.3, max_ratio=0.5, reconstruct=False)
    for g in res.report["groups"]:
        if g["frozen_reason"] is None:
            assert g["size_after"] >= g["size_before"] * 0.5 - 1e-9, g["name"]


@pytest.mark.parametrize("opts", [{}, {"reconstruct": True, "correct": True}])
def test_target_counts_the_biases_compensation_adds(opts):
    """MatMul layers without a bias get one from compensation; the target still holds as the
    report counts parameters."""
    rng = np.random.default_rng(1)
    inits = {"w1": rng.standard_normal((6, 16)), "w2": rng.standard_normal((16, 16)),
             "w3": rng.standard_normal((16, 4))}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MatMul", ["r2", "w3"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = (rng.standard_normal((128, 6)) + 0.5).astype(np.float32)
    res = graphprune.prune(m, criterion="obspa", calib={"x": x}, target_params=0.3,
                           allocate="obs", **opts)
    assert len(res.model.graph.node) > len(m.graph.node)  # bias Add nodes were created
    p = res.report["params"]
    assert p["before"] - p["after"] >= 0.3 * p["before"], p

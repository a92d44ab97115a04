"""The `lrp` criterion (Layer-wise Relevance Propagation): conservation of relevance through the
backward rules, ranking, end-to-end pruning and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.calibration.data import Calibration
from graphprune.pipeline.calibrate import build_context
from graphprune.criteria.lrp.step import RULES
from graphprune.pipeline.calibrate import relevance_sums
from graphprune.criteria import CRITERIA
from graphprune.pipeline.options import CALIB_CRITERIA
from graphprune.pipeline.pipeline import analyze_model
from helpers import assert_equivalent, run
from test_criteria import _conv_pair, _model

ROOT = Path(__file__).resolve().parent.parent
RESNET = ROOT / "models" / "onnx" / "resnet_tiny.legacy.onnx"  # residual Adds, MaxPool, GAP
DENSENET = ROOT / "models" / "onnx" / "densenet_tiny.dynamo.onnx"  # BN, Concat, AveragePool
BERT = ROOT / "models" / "onnx" / "tx" / "bert.dynamo.onnx"  # LayerNorm, attention, Gelu


def _close(a: float, b: float, rel: float = 1e-3) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def _mlp(rng):
    """x → Gemm → Relu → Gemm → Relu → Gemm → y, all biases zero."""
    inits = {"w1": rng.standard_normal((16, 8)), "b1": np.zeros(16),
             "w2": rng.standard_normal((12, 16)), "b2": np.zeros(12),
             "w3": rng.standard_normal((5, 12)), "b3": np.zeros(5)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], transB=1),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], transB=1)]
    return _model(nodes, inits, ["N", 8], y_shape=["N", 5])


def _conv_gap(rng):
    """x → Conv → Relu → GlobalAveragePool → Flatten → Gemm → y, no biases."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    return _model(nodes, {"w1": rng.standard_normal((6, 3, 3, 3)),
                          "w2": rng.standard_normal((4, 6))}, ["N", 3, 8, 8],
                  y_shape=["N", 4])


def _routing_net(rng):
    """Every routing rule on one path: BN (folded), MaxPool ‖ AveragePool → Concat → Split →
    depthwise Conv + skip Add → Transpose → Slice → Resize (nearest) → GAP → Reshape → MatMul."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["m"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["m", "p"], ["cat"], axis=1),
        helper.make_node("Split", ["cat", "sp"], ["s1", "s2"], axis=1),
        helper.make_node("Conv", ["s1", "wd"], ["d"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["dr"]),
        helper.make_node("Add", ["dr", "s2"], ["e"]),
        helper.make_node("Transpose", ["e"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Slice", ["t", "st", "en", "ax"], ["sl"]),
        helper.make_node("Resize", ["sl", "", "sc"], ["u"], mode="nearest"),
        helper.make_node("GlobalAveragePool", ["u"], ["gp"]),
        helper.make_node("Reshape", ["gp", "shp"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["y"]),
    ]
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)), "g": rng.uniform(0.5, 2, 8),
             "be": rng.standard_normal(8), "mu": rng.standard_normal(8) * 0.1,
             "var": rng.uniform(0.5, 2, 8), "wd": rng.standard_normal((8, 1, 3, 3)),
             "sc": np.array([1, 1, 2, 2]), "w2": rng.standard_normal((8, 3))}
    ints = {"sp": np.array([8, 8]), "st": np.array([1]), "en": np.array([4]),
            "ax": np.array([2]), "shp": np.array([0, -1])}
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
        + [numpy_helper.from_array(v.astype(np.int64), k) for k, v in ints.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_registered_everywhere():
    assert "lrp" in CRITERIA and "lrp" in CALIB_CRITERIA
    for op in ("Conv", "Gemm", "MatMul", "Add", "BatchNormalization", "Relu", "MaxPool",
               "AveragePool", "GlobalAveragePool", "ReduceMean", "Concat", "Split", "Slice",
               "Reshape", "Flatten", "Transpose", "Mul", "Clip", "Dropout", "Identity"):
        assert op in RULES, op


def test_conservation_dense():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8)).astype(np.float32)
    sums = relevance_sums(_mlp(rng), {"x": x})
    total = sums["y"]
    assert total != 0
    for t in ("h2", "r2", "h1", "r1", "x"):
        assert _close(sums[t], total), (t, sums)


@pytest.mark.parametrize("conv_rule", ["epsilon", "zplus"])
def test_conservation_conv(conv_rule):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    sums = relevance_sums(_conv_gap(rng), {"x": x}, conv_rule=conv_rule, first_rule=conv_rule)
    for t in ("f", "p", "r", "c", "x"):
        assert _close(sums[t], sums["y"]), (t, sums)


def test_conservation_through_routing_ops():
    """z⁺ ignores biases and BN shifts, pools/joins conserve: every cut of the graph carries the
    output relevance, and the branches of a split add up to it."""
    rng = np.random.default_rng(2)
    m = _routing_net(rng)
    x = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    sums = relevance_sums(m, {"x": x}, batch=4)  # two batches: sums over both
    total = sums["y"]
    for t in ("f", "u", "sl", "cat", "a", "c", "x"):
        assert _close(sums[t], total), (t, sums)
    assert _close(sums["s1"] + sums["s2"], total) and _close(sums["m"] + sums["p"], total)
    assert sums["n"] == sums["c"]  # BN folded into the conv: relevance passes through it


def test_labels_choose_the_target_logit():
    rng = np.random.default_rng(3)
    m = _mlp(rng)
    x = rng.standard_normal((12, 8)).astype(np.float32)
    logits = run(m, {"x": x})["y"].astype(np.float64)
    labels = rng.integers(0, 5, 12)
    s = relevance_sums(m, {"x": x}, labels=labels)
    assert _close(s["y"], float(logits[np.arange(12), labels].sum()), 1e-5)
    s = relevance_sums(m, {"x": x})
    assert _close(s["y"], float(logits.max(1).sum()), 1e-5)


def test_dead_channel_ranks_last():
    rng = np.random.default_rng(0)
    m = _conv_pair(rng, dead=2)
    _, dg = analyze_model(m)
    ctx = build_context(dg, None)
    ctx.calibration = Calibration({"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)})
    (grp,) = dg.prunable_groups()
    s = CRITERIA["lrp"](dg, calib_ctx=ctx)[grp.id]
    assert len(s) == 4 and int(np.argmin(s)) == 2 and np.sum(s == s.min()) == 1
    assert abs(float(s.sum()) - 1.0) < 1e-9  # L1-normalized per group
    assert not ctx.notes


def test_unknown_op_stops_relevance_and_falls_back():
    """Relevance cannot cross an op without a rule: the group behind it is scored by magnitude
    and both facts are noted."""
    rng = np.random.default_rng(4)
    w1, w2 = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((5, 4, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Sin", ["c2"], ["y"])]
    m = _model(nodes, {"w1": w1, "w2": w2}, ["N", 3, 8, 8], y_shape=["N", 5, 8, 8])
    _, dg = analyze_model(m)
    ctx = build_context(dg, None)
    scores = CRITERIA["lrp"](dg, calib_ctx=ctx, samples=4)
    notes = " | ".join(ctx.notes)
    assert "random inputs" in notes and "Sin has no relevance rule" in notes
    assert "scored by magnitude" in notes
    (grp,) = dg.prunable_groups()
    assert np.all(np.isfinite(scores[grp.id])) and scores[grp.id].sum() > 0


@pytest.mark.parametrize("path", [RESNET, DENSENET], ids=["resnet_tiny", "densenet_tiny"])
def test_prune_bundled_cnn(path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    # reconstruction off: the pruned model must equal the consumer-zeroed original
    res = graphprune.prune(str(path), ratio=0.3, criterion="lrp", calib={"input": x},
                           labels=rng.integers(0, 10, 8), reconstruct=False)
    onnx.checker.check_model(res.model)
    r = res.report
    assert r["criterion"] == "lrp" and r["params"]["after"] < r["params"]["before"]
    assert r["calibration"]["samples"] == 8 and r["calibration"]["notes"] == []
    assert res.plan.keep and r["fidelity"]["value"] > 0.5
    assert_equivalent(onnx.load(str(path)), res)


def test_without_calibration_uses_random_samples():
    res = graphprune.prune(str(RESNET), ratio=0.3, criterion="lrp", global_rank=True)
    cal = res.report["calibration"]
    assert cal["source"] == "random:16 (lrp)" and cal["samples"] == 16
    assert cal["notes"] and "random inputs" in cal["notes"][0]


def test_transformer_rules_reach_every_group():
    """LayerNorm, attention (probabilities as constant weights), Gelu: no group falls back."""
    res = graphprune.prune(str(BERT), ratio=0.2, criterion="lrp", calib=4)
    assert res.report["calibration"]["notes"] == []
    assert res.plan.keep


def test_cli(tmp_path):
    from click.testing import CliRunner

    from graphprune.cli.main import main

    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    r = CliRunner().invoke(main, [str(RESNET), "--criterion", "lrp", "--calib-random", "8",
                                  "-o", str(out), "--report", str(rep), "--quiet"])
    assert r.exit_code == 0, r.output
    report = json.loads(rep.read_text())
    assert report["criterion"] == "lrp"
    assert report["calibration"]["source"] == "random:8" and "notes" in report["calibration"]
    onnx.checker.check_model(onnx.load(str(out)))
    r = CliRunner().invoke(main, ["prune", "--help"])
    assert "lrp" in r.output

"""Activation-aware criteria (wanda, flap, obspa), calibration loading and compensation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune
from graphprune.calibration.data import Calibration, load_calibration
from graphprune.pipeline.calibrate import build_context
from graphprune.criteria import CRITERIA
from graphprune.pipeline.pipeline import analyze_model
from helpers import run

ROOT = Path(__file__).resolve().parent.parent
RESNET = ROOT / "models" / "onnx" / "resnet_tiny.legacy.onnx"
CALIB_CRITERIA = ["wanda", "flap", "obspa", "amp"]


def _model(nodes, inits, x_shape, y_name="y", y_shape=None):
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _two_gemms(w1, b1, w2, b2=None):
    """x → Gemm(W1ᵀ, b1) → h → Gemm(W2ᵀ[, b2]) → y: h's features are the prunable group."""
    inits = {"w1": w1, "b1": b1, "w2": w2}
    n2 = ["h", "w2"] + (["b2"] if b2 is not None else [])
    if b2 is not None:
        inits["b2"] = b2
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Gemm", n2, ["y"], transB=1)]
    return _model(nodes, inits, ["N", w1.shape[1]], y_shape=["N", w2.shape[0]])


def _conv_pair(rng, dead: int):
    """x → Conv(4 ch) → Relu → Conv → y, channel `dead` of the middle has zero weights."""
    w1 = rng.standard_normal((4, 3, 3, 3))
    b1 = rng.standard_normal(4) * 0.1
    w2 = rng.standard_normal((5, 4, 3, 3))
    w1[dead], b1[dead], w2[:, dead] = 0, 0, 0
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    return _model(nodes, {"w1": w1, "b1": b1, "w2": w2}, ["N", 3, 8, 8],
                  y_shape=["N", 5, 8, 8])


def test_criteria_are_registered():
    assert set(CRITERIA) >= {"magnitude", "random", *CALIB_CRITERIA}


@pytest.mark.parametrize("crit", ["magnitude", *CALIB_CRITERIA])
def test_dead_channel_ranks_last(crit):
    rng = np.random.default_rng(0)
    m = _conv_pair(rng, dead=2)
    view, dg = analyze_model(m)
    cal = Calibration({"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)})
    ctx = build_context(dg, cal)
    scores = CRITERIA[crit](dg, calib_ctx=ctx)
    (grp,) = [g for g in dg.prunable_groups()]
    s = scores[grp.id]
    assert len(s) == 4 and int(np.argmin(s)) == 2
    assert np.sum(s == s.min()) == 1


def test_obspa_data_free_ranks_dead_channel_last():
    m = _conv_pair(np.random.default_rng(1), dead=1)
    _, dg = analyze_model(m)
    s = next(iter(CRITERIA["obspa"](dg).values()))
    assert int(np.argmin(s)) == 1


def _correlated(rng, n, mix, noise=0.05):
    """Samples of a few latent factors mixed into len(mix[0]) correlated features."""
    z = rng.standard_normal((n, len(mix)))
    return (z @ mix + noise * rng.standard_normal((n, mix.shape[1]))).astype(np.float32)


def test_obspa_compensation_reduces_output_error():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((12, 10))
    w2 = rng.standard_normal((6, 12))
    m = _two_gemms(w1, rng.standard_normal(12), w2, rng.standard_normal(6))
    mix = rng.standard_normal((3, 10))
    x = _correlated(rng, 512, mix)
    x_test = _correlated(np.random.default_rng(1), 256, mix)
    ref = run(m, {"x": x_test})["y"]
    errs = {}
    for comp in (None, False):
        res = graphprune.prune(m, ratio=0.5, criterion="obspa", calib={"x": x}, compensate=comp)
        assert res.plan.keep, "nothing was pruned"
        y = run(res.model, {"x": x_test})["y"]
        errs[comp] = float(np.mean((y - ref) ** 2))
    assert res.report.get("compensation") is None
    assert errs[None] < 0.2 * errs[False], errs


def test_flap_bias_compensation_keeps_mean_output():
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 6))
    w2 = rng.standard_normal((4, 8))
    m = _two_gemms(w1, rng.standard_normal(8) + 1.0, w2, rng.standard_normal(4))
    x = (rng.standard_normal((64, 6)) + 0.5).astype(np.float32)
    res = graphprune.prune(m, ratio=0.5, criterion="flap", calib={"x": x})
    layers = res.report["compensation"]["layers"]
    assert layers and layers[0]["bias"] == "updated"
    before, after = run(m, {"x": x})["y"], run(res.model, {"x": x})["y"]
    assert not np.allclose(before, after, atol=1e-3)  # pruning did change the outputs...
    np.testing.assert_allclose(after.mean(0), before.mean(0), rtol=1e-4, atol=1e-4)  # ...not the mean


def test_compensation_adds_bias_where_there_is_none():
    rng = np.random.default_rng(4)
    # Gemm without C, and MatMul (gets an Add node)
    w1, w2 = rng.standard_normal((8, 6)), rng.standard_normal((4, 8))
    gemm = _two_gemms(w1, rng.standard_normal(8), w2)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m"]),
             helper.make_node("Relu", ["m"], ["r2"]),
             helper.make_node("MatMul", ["r2", "w3"], ["y"])]
    matmul = _model(nodes, {"w1": rng.standard_normal((6, 8)), "w2": rng.standard_normal((8, 7)),
                            "w3": rng.standard_normal((7, 3))}, ["N", 6], y_shape=["N", 3])
    x = (rng.standard_normal((64, 6)) + 0.3).astype(np.float32)
    for m, want in ((gemm, "added"), (matmul, "added (Add node)")):
        res = graphprune.prune(m, ratio=0.3, criterion="obspa", calib={"x": x})
        hows = {lay["bias"] for lay in res.report["compensation"]["layers"]}
        assert hows == {want}
        onnx.checker.check_model(res.model)
        y = run(res.model, {"x": x})["y"]
        assert y.shape == (64, m.graph.output[0].type.tensor_type.shape.dim[1].dim_value)


@pytest.mark.parametrize("crit", CALIB_CRITERIA)
def test_end_to_end_resnet_tiny(crit, tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "calib.npz"
    np.savez(npz, input=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    res = graphprune.prune(str(RESNET), ratio=0.3, criterion=crit, calib=str(npz))
    onnx.checker.check_model(res.model)
    r = res.report
    assert r["params"]["after"] < r["params"]["before"]
    assert r["fidelity"] is not None and r["fidelity"]["value"] > 0.5
    assert r["calibration"]["calibrated"] and r["calibration"]["samples"] == 8
    assert r["calibration"]["consumers"] > 0 and not r["calibration"]["notes"]
    # with calibration data every data-aware criterion reconstructs by default
    assert r["compensation"]["mode"] == "reconstruct" and r["compensation"]["layers"]
    if crit in ("flap", "obspa"):  # one-shot compensation, as before, when asked for
        one = graphprune.prune(str(RESNET), ratio=0.3, criterion=crit, calib=str(npz),
                               reconstruct=False, validate=False)
        assert one.report["compensation"]["mode"] == crit and one.report["compensation"]["layers"]


def test_obspa_data_free_and_uncalibrated_fallbacks():
    res = graphprune.prune(str(RESNET), ratio=0.3, criterion="obspa")
    assert res.report["calibration"]["data_free"] == ["identity"]  # BN folded: no stats
    res = graphprune.prune(str(RESNET), ratio=0.3, criterion="wanda")
    assert "magnitude" in res.report["calibration"]["notes"][0]
    res = graphprune.prune(str(RESNET), ratio=0.3, criterion="flap", calib=4, global_rank=True)
    assert res.report["calibration"]["source"] == "random:4"


def test_data_free_stats_from_batchnorm():
    from graphprune.calibration.stats import data_free_stats, find_consumers

    rng = np.random.default_rng(0)
    gamma, beta = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.0, 1.0, -1.0, 3.0])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    m = _model(nodes, {"w1": rng.standard_normal((4, 3, 3, 3)), "g": gamma, "b": beta,
                       "mu": np.zeros(4), "var": np.ones(4),
                       "w2": rng.standard_normal((5, 4, 3, 3))}, ["N", 3, 8, 8],
               y_shape=["N", 5, 8, 8])
    _, dg = analyze_model(m)
    st = next(iter(data_free_stats(dg, find_consumers(dg)).values()))
    assert st.source == "batchnorm"
    z = rng.standard_normal((200000, 4)) * gamma + beta  # Monte-Carlo check of the moments
    np.testing.assert_allclose(st.mean, np.maximum(z, 0).mean(0), rtol=0.02, atol=0.01)
    np.testing.assert_allclose(st.second, (np.maximum(z, 0) ** 2).mean(0), rtol=0.02, atol=0.01)


def test_image_folder_calibration(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, size in enumerate([(40, 50), (64, 32), (32, 32)]):
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(
            tmp_path / f"img{k}.png")
    m = onnx.load(str(RESNET))
    cal = load_calibration(tmp_path, m, labels=[1, 2, 3])
    (arr,) = cal.feeds.values()
    assert arr.shape == (3, 3, 32, 32) and arr.dtype == np.float32
    assert -2.2 < arr.min() < -1.5 and 2.0 < arr.max() < 2.7  # imagenet-normalized [0, 1]
    raw = load_calibration(tmp_path, m, preprocess="none")
    assert 0.0 <= next(iter(raw.feeds.values())).min() and next(iter(raw.feeds.values())).max() <= 1
    res = graphprune.prune(str(RESNET), ratio=0.2, criterion="wanda", calib=str(tmp_path))
    assert res.report["calibration"]["source"].startswith("images:")


def test_cli_calibration_options(tmp_path):
    import json

    from click.testing import CliRunner
    from PIL import Image

    from graphprune.cli.main import main

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{k}.png")
    out = tmp_path / "o.onnx"
    for extra in (["--calib", str(tmp_path / "imgs")], ["--calib-random", "4"]):
        r = CliRunner().invoke(main, ["prune", str(RESNET), "--criterion", "obspa", "-o", str(out),
                                      "--json", *extra], standalone_mode=False)
        assert r.exit_code in (0, None), r.output
        rep = json.loads(r.output)
        assert rep["calibration"]["calibrated"] and rep["compensation"]["layers"]
    r = CliRunner().invoke(main, ["prune", str(RESNET), "--criterion", "flap", "-o", str(out),
                                  "--calib-random", "4", "--compensate", "none", "--json"],
                           standalone_mode=False)
    assert "compensation" not in json.loads(r.output)

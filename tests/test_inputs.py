"""Inputs with symbolic dims and inputs that need real values: the sizes and values of every
ONNX Runtime run (reference, validation, shape probing) and of the MAC count.

- sizes the weights fix are derived from the graph ([N, F] into a Gemm of 81 features);
- `input_shapes` / ``--input-shapes`` and the `--calib` data set sizes; `input_values` /
  ``--input-values`` and the data set values (a sample rate that must be 8000 or 16000, an
  index that must stay in range); a model that cannot run on random inputs is validated on
  the data given;
- equal dim names get one size on every input (a state's batch on axis 1);
- the shape probe runs three sizes far enough apart that a width divided by 16 is never taken
  for a constant (the paddle2onnx SVTR recognizer);
- MACs are counted at concrete sizes, and the report says which were assumed.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.errors import UserError
from graphprune.ir.input_sizes import graph_input_dims, plan_inputs
from helpers import run
from models.coverage import build

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def cli(*args):
    return subprocess.run([sys.executable, "-m", "graphprune.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("name,dims", [("sym_feat_gemm", {("features", 1): 81}),
                                       ("sym_feat_conv1d", {("mfcc", 1): 81}),
                                       ("sym_all_nchw", {("image", 1): 3})])
def test_symbolic_dims_fixed_by_weights(name, dims, tmp_path):
    model, _ = build(name)
    assert graph_input_dims(model) == dims
    res = graphprune.prune(model, ratio=0.3)  # no --input-shapes needed
    assert res.report["summary"]["pruned_groups"] > 0
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    r = cli("analyze", path, "--json")
    assert r.returncode == 0, r.stderr
    assert any(g["prunable"] for g in json.loads(r.stdout)["groups"])


def test_equal_dim_names_get_one_size():
    model, _ = build("rnn_lstm_bi2_h0")  # x [batch, seq, 8], h0 / c0 [4, batch, 16]
    plan = plan_inputs(model)
    assert plan.shapes == {"x": [1, 16, 8], "h0": [4, 1, 16], "c0": [4, 1, 16]}
    assert plan.shapes_at(3, 5, axes="symbolic") == {"x": [3, 5, 8], "h0": [4, 3, 16],
                                                     "c0": [4, 3, 16]}


@pytest.mark.parametrize("name", ["need_sr_if", "need_sr_where"])
def test_input_values_select_a_valid_branch(name, tmp_path):
    model, sample = build(name)
    with pytest.raises(UserError, match="--input-values"):
        graphprune.prune(model, ratio=0.3)
    res = graphprune.prune(model, ratio=0.3, input_values="sr=16000")
    assert res.report["params"]["after"] < res.report["params"]["before"]
    path, data = tmp_path / "m.onnx", tmp_path / "inputs.npz"
    onnx.save(model, path)
    np.savez(data, **sample)
    r = cli(path, "--ratio", "0.3", "--calib", data, "-o", tmp_path / "out.onnx", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fidelity"]["inputs"].startswith("calib:")


@pytest.mark.parametrize("name", ["need_index_range", "need_seq_lens", "need_mask_len"])
def test_given_data_feeds_every_run(name):
    """An index that must stay in range, sequence lengths next to a time-major input, a mask
    whose length must match: the reference and validation runs use the data given."""
    model, sample = build(name)
    res = graphprune.prune(model, ratio=0.3, feeds=sample)
    got = run(res.model, sample)
    assert all(np.all(np.isfinite(v)) for v in got.values())
    if name == "need_index_range":
        with pytest.raises(UserError, match="does not run in onnxruntime on random inputs"):
            graphprune.prune(model, ratio=0.3)


def test_input_shapes_option():
    model, _ = build("macs_yolo_dynamic")
    res = graphprune.prune(model, ratio=0.3, input_shapes="images:1x3x320x320")
    static, _ = build("macs_yolo_legacy")
    ref = graphprune.prune(static, ratio=0.3)
    assert res.report["macs"] == ref.report["macs"]
    assert res.report["macs"]["before"] > 25e6  # 320x320, not 1x1 spatial
    assert res.report["macs"]["assumed"] == []
    guessed = graphprune.prune(model, ratio=0.3).report["macs"]
    assert guessed["assumed"] == ["images[0] (batch) = 1", "images[2] (height) = 224",
                                  "images[3] (width) = 224"]
    assert guessed["before"] == pytest.approx(ref.report["macs"]["before"] * (224 / 320) ** 2,
                                              rel=0.05)
    for bad, word in (("images:1x3x320", "rank"), ("nope:1x2", "no input"),
                      ("images:1x4x320x320", "in the model"), ("images=1x3", "takes")):
        with pytest.raises(UserError, match=word):
            graphprune.prune(model, ratio=0.3, input_shapes=bad)
    with pytest.raises(UserError, match="number"):
        graphprune.prune(model, ratio=0.3, input_values="images=abc")


def test_downsampled_width_is_not_taken_for_a_constant():
    """paddle2onnx's SVTR recognizer divides the width by 16 and reshapes with x.shape[1]: the
    pruned model must run at widths other than the validation's."""
    model, _ = build("paddle_svtr_rec")
    res = graphprune.prune(model, ratio=0.3)
    assert res.report["params"]["after"] < res.report["params"]["before"]
    rng = np.random.default_rng(0)
    for width in (160, 320):
        x = rng.standard_normal((1, 3, 32, width)).astype(np.float32)
        a, b = run(model, {"x": x}), run(res.model, {"x": x})
        assert [v.shape for v in a.values()] == [v.shape for v in b.values()]


def test_fidelity_measurement_uses_the_planned_inputs():
    """--html / --benchmark / --max-drop measure fidelity on random inputs: at the sizes the
    weights fix and with the values given."""
    from graphprune.pipeline.measure import evaluate_result

    for name, kw in (("sym_feat_gemm", {}), ("need_sr_where", {"input_values": {"sr": 8000}})):
        model, _ = build(name)
        res = graphprune.prune(model, ratio=0.3, **kw)
        report = evaluate_result(res, model)
        assert report["fidelity"]["samples"] == 32 and report["fidelity"]["value"] > 0.5

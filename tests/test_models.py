"""Bundled models (both exporters): equivalence to consumer zeroing, ratio 0 identity, cost."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune
from helpers import assert_equivalent, feeds_for, run

MODELS = sorted((Path(__file__).resolve().parent.parent / "models" / "onnx").glob("*.onnx"))
IDS = [p.name[:-5] for p in MODELS]


@pytest.fixture(scope="module", params=MODELS, ids=IDS)
def model(request):
    return onnx.load(str(request.param))


def test_bundled_models_present():
    exporters = {p.name.split(".")[-2] for p in MODELS}
    assert {"legacy", "dynamo"} <= exporters
    assert len(MODELS) >= 16


def test_equivalent_to_zeroing_consumers(model):
    res = graphprune.prune(model, ratio=0.3)
    assert res.plan.keep, "nothing was pruned"
    assert_equivalent(model, res)


def test_ratio_zero_is_identity(model):
    res = graphprune.prune(model, ratio=0.0)
    feeds = feeds_for(model)
    a, b = run(model, feeds), run(res.model, feeds)
    for k in a:
        assert np.array_equal(a[k], b[k])
    assert res.report["params"]["after"] == res.report["params"]["before"]


def test_ratio_lowers_params_and_macs(model):
    r = graphprune.prune(model, ratio=0.3).report
    assert r["params"]["after"] < r["params"]["before"]
    assert r["macs"]["after"] < r["macs"]["before"]
    assert r["fidelity"]["value"] > 0


def test_high_ratio_still_valid(model):
    res = graphprune.prune(model, ratio=0.9)
    onnx.checker.check_model(res.model, full_check=True)
    assert_equivalent(model, res)


def test_global_ranking_equivalent(model):
    res = graphprune.prune(model, ratio=0.4, global_rank=True, round_to=4)
    assert_equivalent(model, res)
    for g in res.report["groups"]:
        if g["frozen_reason"] is None and g["size_after"] < g["size_before"]:
            assert g["size_after"] % 4 == 0 or g["size_before"] < 4


@pytest.mark.parametrize("name", ["vgg_flatten.dynamo", "se_net_tiny.legacy", "resnet_tiny.dynamo",
                                  "shufflenetv2_tiny.dynamo", "unet_tiny.legacy"])
def test_dynamic_batch(name):
    from helpers import make_batch_dynamic

    path = next(p for p in MODELS if p.name == f"{name}.onnx")
    model = make_batch_dynamic(onnx.load(str(path)))
    res = graphprune.prune(model, ratio=0.3)
    assert res.report["params"]["after"] < res.report["params"]["before"]
    from graphprune.runtime import session as ortb

    sess = ortb.session(model)
    feeds = ortb.random_inputs(sess, batch=3)
    ref = run(model, feeds)
    out = run(res.model, feeds)
    for k in ref:
        assert out[k].shape == ref[k].shape and out[k].shape[0] == 3
    assert_equivalent(model, res)

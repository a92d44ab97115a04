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

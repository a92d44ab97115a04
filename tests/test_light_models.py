"""The real topologies shipped in the onnx wheel (placeholder weights) all prune at 0.3:
every group is pruned or frozen with a reason, and the result is valid and runs in ORT."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import graphprune
from helpers import assert_equivalent

LIGHT = sorted((Path(onnx.__file__).parent / "backend/test/data/light").glob("*.onnx"))


@pytest.mark.parametrize("path", LIGHT, ids=[p.stem for p in LIGHT])
def test_light_model_prunes(path):
    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.3)  # validates: checker + ORT + output signature
    r = res.report
    assert r["params"]["after"] <= r["params"]["before"]
    for g in r["groups"]:
        assert g["frozen_reason"] is not None or g["size_before"] >= 1
        if g["frozen_reason"] is not None:
            assert g["size_after"] == g["size_before"]
    if r["params"]["before"] < 30_000_000:  # the oracle materializes weights: keep it small
        assert_equivalent(model, res, atol=1e-3, rtol=1e-3)


def test_light_models_found():
    assert len(LIGHT) >= 8


def test_resnet50_light_is_pruned():
    path = next(p for p in LIGHT if "resnet50" in p.name)
    r = graphprune.prune(str(path), ratio=0.3).report
    assert r["summary"]["pruned_groups"] > 20
    assert r["macs"]["after"] < 0.7 * r["macs"]["before"]

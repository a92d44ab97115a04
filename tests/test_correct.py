"""Statistics correction (transforms/correct.py), alone and inside the reconstruction walk."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.runtime.segments import tap_model
from graphprune.transforms.correct import MAX_SCALE
from graphprune.transforms.rewrite import keep_positions

from helpers import image_calib, run_taps

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models" / "onnx"


def _stats(model, names, feeds):
    vals = {t: [] for t in names}
    for b in run_taps(tap_model(model, names), feeds, names, batch=1):
        for t in names:
            vals[t].append(b[t])
    out = {}
    for t, v in vals.items():
        a = np.moveaxis(np.concatenate(v), 1, -1).reshape(-1, v[0].shape[1])
        out[t] = (a.mean(0), a.std(0))
    return out


@pytest.mark.parametrize("opts", [{"criterion": "magnitude", "correct": "meanvar"},
                                  {"criterion": "obspa", "correct": True, "reconstruct": False},
                                  {"criterion": "obspa", "correct": "meanvar"}])  # in the walk
def test_correction_restores_channel_statistics(opts):
    """On the calibration samples, every corrected layer's kept output channels have the
    original mean and standard deviation (where the scale was not clipped)."""
    path = MODELS / "mobilenetv2_tiny.legacy.onnx"
    m = onnx.load(str(path))
    cal = image_calib(8)
    res = graphprune.prune(str(path), ratio=0.4, calib=cal, **opts)
    rep = res.report.get("correction") or res.report["compensation"]["correction"]
    assert rep["mode"] == "meanvar" and len(rep["layers"]) > 3
    names = {n.name or n.output[0]: n.output[0] for n in m.graph.node}
    layers = [lay for lay in rep["layers"]
              if 1 / MAX_SCALE < lay["scale_min"] and lay["scale_max"] < MAX_SCALE]
    ys = [names[lay["node"]] for lay in layers]
    ref, got = _stats(m, ys, cal), _stats(res.model, ys, cal)
    keep = keep_positions(res.graph, res.plan)
    for y in ys:
        (mu, sd), (mu2, sd2) = ref[y], got[y]
        k = keep.get((y, 1))
        if k is not None:
            mu, sd = mu[k], sd[k]
        live = sd > 1e-3 * (1 + np.abs(mu))
        np.testing.assert_allclose(mu2, mu, atol=1e-3 * (1 + np.abs(mu).max()), err_msg=y)
        np.testing.assert_allclose(sd2[live], sd[live], rtol=2e-3, err_msg=y)


def test_correction_lowers_the_output_error_of_uncompensated_pruning():
    path = MODELS / "resnet_tiny.legacy.onnx"
    m = onnx.load(str(path))
    cal, test = image_calib(16), image_calib(8, seed=1)
    out = m.graph.output[0].name
    ref = np.concatenate([b[out] for b in run_taps(tap_model(m, [out]), test, [out], 1)])
    errs = {}
    for corr in (False, True):
        res = graphprune.prune(str(path), ratio=0.4, criterion="magnitude", calib=cal,
                               correct=corr)
        assert ("correction" in res.report) == corr
        y = np.concatenate([b[out] for b in run_taps(tap_model(res.model, [out]), test, [out], 1)])
        errs[corr] = float(np.sum((y - ref) ** 2) / np.sum(ref ** 2))
    assert errs[True] < errs[False], errs

"""Outputs that are not plain tensors, and outputs that barely vary: validation compares what
can be compared and never crashes; the fidelity cosine does not collapse on rounding noise."""
from __future__ import annotations

import numpy as np

import graphprune
from graphprune.runtime.fidelity import compare_outputs, cosine
from models.coverage import build


def test_zipmap_sequence_of_maps_output_is_validated_and_compared():
    model, _ = build("skl_style_mlp_zipmap")
    res = graphprune.prune(model, ratio=0.5)
    assert res.report["summary"]["pruned_groups"] == 1  # the MLP's hidden width
    assert res.report["params"]["after"] < res.report["params"]["before"]
    assert 0.5 < res.report["fidelity"]["value"] <= 1.0


def test_sequence_of_maps_compares_by_key_order():
    a = {"p": [{0: 0.1, 1: 0.9}, {0: 0.7, 1: 0.3}]}
    b = {"p": [{1: 0.9, 0: 0.1}, {0: 0.7, 1: 0.3}]}
    res = compare_outputs(a, b)
    assert res["value"] == 1.0 and res["max_abs_diff"] == 0.0


def test_near_constant_outputs_that_agree_read_cosine_one():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(1000) * 1e-9  # a zero output up to float rounding
    assert cosine(noise, rng.standard_normal(1000) * 1e-9) == 1.0
    assert abs(cosine(np.ones(5), -np.ones(5)) + 1.0) < 1e-12
    res = compare_outputs({"y": noise.astype(np.float32)}, {"y": np.zeros(1000, np.float32)})
    assert res["value"] == 1.0 and res["max_abs_diff"] < 1e-8

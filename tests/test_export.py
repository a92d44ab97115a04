"""Fresh exports with both PyTorch exporters prune equivalently (guards the export path)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402

import graphprune  # noqa: E402
from helpers import assert_equivalent  # noqa: E402
from models.export import export_model  # noqa: E402


@pytest.mark.parametrize("exporter", ["legacy", "dynamo", "legacy_bn"])
@pytest.mark.parametrize("name", ["resnet_tiny", "densenet_tiny"])
def test_fresh_export_prunes(tmp_path, name, exporter):
    path = tmp_path / f"{name}.{exporter}.onnx"
    export_model(name, path, exporter)
    model = onnx.load(str(path))
    res = graphprune.prune(model, ratio=0.3)
    assert res.report["params"]["after"] < res.report["params"]["before"]
    assert_equivalent(model, res)

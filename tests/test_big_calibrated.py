"""Calibration, block scoring, validation, fidelity and benchmarks on a model whose weights stay
on disk (the path every model over 2 GB takes), on a ~20 MB LLaMA-shaped model with external
data forced down that path.

ONNX Runtime must run such a model from its data file and from the arrays the pipeline
rewrote, never reading an untouched weight into Python; the result must be exactly what the
all-in-memory path gives (same pruned weights, same report numbers).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

import graphprune
from benchmarks.make_big_llama import build
from graphprune.cli.main import main
from graphprune.ir import WEIGHTS, GraphView
from graphprune.ir import load as ir_load
from graphprune.ir.load import open_model
from graphprune.ir.storage import SLOT_KEY, WeightStore
from graphprune.pipeline import stages
from graphprune.runtime import taps as runtime_taps
from graphprune.runtime.taps import TapRunner

VOCAB = 4096


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bigcal")
    return build(d / "llama.onnx", layers=3, hidden=256, heads=4, mlp=768, vocab=VOCAB)


@pytest.fixture(scope="module")
def calib(llama) -> Path:
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(12, 32)).astype(np.int64)
    p = llama.parent / "calib.npz"
    np.savez(p, input_ids=ids)
    return p


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    """A word-level tokenizer.json over the model's vocabulary, and a text for it."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = [f"w{i}" for i in range(VOCAB)]
    tok = tokenizers.Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    d = tmp_path_factory.mktemp("tok")
    tok.save(str(d / "tokenizer.json"))
    (d / "calib.txt").write_text(" ".join(words[(i * 37 + i // 7) % VOCAB] for i in range(600)))
    return d / "tokenizer.json", d / "calib.txt"


def weights(result) -> dict[str, np.ndarray]:
    """Every constant of a result's model, read wherever it is stored."""
    token = WEIGHTS.set(result.store)
    try:
        view = GraphView(result.model)
        return {n: np.array(view.const_value(n)) for n in view.consts}
    finally:
        WEIGHTS.reset(token)


def comparable(report: dict) -> dict:
    """A report without what depends on where the weights are kept: timings, the estimated
    output size (the layouts differ) and the fidelity (compared with a tolerance)."""
    r = {k: v for k, v in report.items() if k not in ("timings_s", "file_bytes", "fidelity")}
    return json.loads(json.dumps(r))


@pytest.mark.parametrize("criterion", ["flap", "obspa"])
def test_calibrated_prune_with_weights_on_disk_equals_in_memory(llama, calib, criterion,
                                                                monkeypatch):
    kw = dict(ratio=0.3, criterion=criterion, calib=str(calib), drop_blocks=2)
    eager = graphprune.prune(str(llama), in_memory=True, **kw)
    # the model is now "too big" for a ModelProto and more of it stays on disk: no refusal,
    # the pipeline runs on the weights where they lie
    monkeypatch.setattr(stages, "TWO_GB", 1 << 20)
    monkeypatch.setattr(ir_load, "LAZY_MIN_BYTES", 1024)
    lazy = graphprune.prune(str(llama), in_memory=True, **kw)
    assert eager.store is None and lazy.store is not None
    assert lazy.model.ByteSize() < 64 * 1024, "the weights must stay outside the proto"
    assert lazy.store.arrays, "the rewritten tensors are held as arrays"
    assert sum(b["dropped"] for b in lazy.report["blocks"]) == 2
    assert lazy.report["compensation"]["layers"]
    assert comparable(lazy.report) == comparable(eager.report)
    for k in ("value", "max_abs_diff"):  # ONNX Runtime without pre-packing: float rounding
        assert lazy.report["fidelity"][k] == pytest.approx(eager.report["fidelity"][k], rel=1e-5)
    a, b = weights(lazy), weights(eager)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_cli_calibrated_depth_benchmark_and_html_on_external_model(llama, tokenizer, tmp_path):
    tok, text = tokenizer
    out, rep, html = tmp_path / "p.onnx", tmp_path / "r.json", tmp_path / "r.html"
    r = CliRunner().invoke(main, [str(a) for a in (
        llama, "-o", out, "--criterion", "flap", "--calib-text", text, "--tokenizer", tok,
        "--seq-len", "32", "--drop-blocks", "2", "--benchmark", "--repeats", "3",
        "--report", rep, "--html", html, "--quiet")])
    assert r.exit_code == 0, (r.stderr, r.exception)
    report = json.loads(rep.read_text())
    assert report["calibration"]["calibrated"] and report["calibration"]["samples"] == 18
    assert sum(b["dropped"] for b in report["blocks"]) == 2
    assert report["fidelity"]["inputs"] == "random" and report["fidelity"]["samples"] == 32
    assert report["latency_ms"]["speedup"] > 0 and report["memory_bytes"]["after"] > 0
    assert report["latency_ms"]["macs_ratio"] == pytest.approx(
        report["macs"]["before"] / report["macs"]["after"])
    assert html.stat().st_size > 10_000
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names[0] == "p.onnx" and names[2:] == ["r.html", "r.json"], names
    assert re.fullmatch(r"p\.onnx\.[0-9a-f]{16}\.data", names[1]), names
    onnx.checker.check_model(str(out), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input_ids": np.array([[1, 5, 9, 4000]], dtype=np.int64)})[0]
    assert y.shape == (1, 4, VOCAB) and np.isfinite(y).all()


# --------------------------------------------------------------------------- the runner
def eager_model(path: Path, changed: dict[str, np.ndarray]) -> onnx.ModelProto:
    m = onnx.load(str(path))
    for t in m.graph.initializer:
        if t.name in changed:
            t.CopyFrom(numpy_helper.from_array(changed[t.name], t.name))
    return m


def test_runner_feeds_rewritten_tensors_and_reads_no_untouched_weight(llama, monkeypatch):
    model, store, _ = open_model(llama)
    by_name = {t.name: t for t in model.graph.initializer}
    lm = store.read(by_name["lm_head.weight"])[:, : VOCAB // 2] * np.float32(2.0)
    down = -store.read(by_name["layers.1.mlp.down.weight"])
    for name, value in (("lm_head.weight", lm), ("layers.1.mlp.down.weight", down)):
        store.put(by_name[name], value)
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = VOCAB // 2
    before = model.SerializeToString()
    reads = []
    real_read = WeightStore.read
    monkeypatch.setattr(WeightStore, "read", lambda self, t: reads.append(t.name)
                        or real_read(self, t))
    feeds = {"input_ids": np.random.default_rng(1).integers(0, VOCAB, (2, 7)).astype(np.int64)}
    token = WEIGHTS.set(store)
    try:
        got = TapRunner().run(model, feeds, ["logits", "layers.1.mlp_residual"])
        tapped = [outs for _, outs in TapRunner().taps(model, ["layers.0.mlp_residual"], feeds)]
    finally:
        WEIGHTS.reset(token)
    assert reads == [], "ONNX Runtime reads the weights itself, none through Python"
    assert model.SerializeToString() == before, "no initializer gains its bytes"
    assert all(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer
               if t.name in ("lm_head.weight", "embed.weight", "layers.0.attn.q.weight"))
    assert [SLOT_KEY in {e.key for e in by_name[n].external_data}
            for n in ("lm_head.weight", "embed.weight")] == [True, False]

    ref = eager_model(llama, {"lm_head.weight": lm, "layers.1.mlp.down.weight": down})
    ref.graph.output[0].type.tensor_type.shape.dim[2].dim_value = VOCAB // 2
    want = TapRunner().run(ref, feeds, ["logits", "layers.1.mlp_residual"])
    assert got["logits"].shape == (2, 7, VOCAB // 2)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    whole = np.concatenate([o["layers.0.mlp_residual"] for o in tapped])
    np.testing.assert_allclose(whole, TapRunner().run(ref, feeds, ["layers.0.mlp_residual"])[
        "layers.0.mlp_residual"], rtol=1e-5, atol=1e-5)


def test_taps_stream_batches_within_the_budget(llama, monkeypatch):
    """The first sample runs alone; the batches after it hold what fits the tap budget."""
    model, store, _ = open_model(llama)
    feeds = {"input_ids": np.random.default_rng(2).integers(0, VOCAB, (10, 16)).astype(np.int64)}
    names = [f"layers.{i}.mlp_residual" for i in range(3)]
    per_sample = 3 * 16 * 256 * 4
    monkeypatch.setattr(runtime_taps, "SMALL_MODEL_BYTES", 0)  # the big-model budget
    monkeypatch.setattr(runtime_taps, "TAP_MIN_BYTES", 3 * per_sample)
    monkeypatch.setattr(runtime_taps, "TAP_MAX_BYTES", 3 * per_sample)
    token = WEIGHTS.set(store)
    try:
        sizes = [len(sub["input_ids"]) for sub, _ in TapRunner().taps(model, names, feeds, 32)]
    finally:
        WEIGHTS.reset(token)
    assert sizes == [1, 3, 3, 3]
    assert runtime_taps.tap_budget(model) == 3 * per_sample


def test_tap_budget_follows_the_model_size():
    from onnx import helper

    def model(nbytes):  # weights declared in external data: only their size matters here
        t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[nbytes // 4],
                        data_location=TensorProto.EXTERNAL)
        g = helper.make_graph([], "g", [], [], [t])
        return helper.make_model(g)

    mb = 1 << 20
    assert runtime_taps.tap_budget(model(20 * mb)) == 256 * mb  # small: large batches
    assert runtime_taps.tap_budget(model(480 * mb)) == 16 * mb
    assert runtime_taps.tap_budget(model(3000 * mb)) == 3000 * mb // 32
    assert runtime_taps.tap_budget(model(20000 * mb)) == 256 * mb


def test_a_result_whose_weights_stay_on_disk_runs_before_it_is_saved(llama, tmp_path):
    """The Python API measures a lazily loaded result where it is: fidelity and the logits
    function read the store's arrays, the benchmark writes a temporary copy."""
    res = graphprune.prune(str(llama), ratio=0.3, dims="mlp")
    assert res.store is not None and res.store.arrays
    assert res.report["fidelity"]["value"] > 0, "validated before anything is written"
    from graphprune.pipeline.measure import evaluate_result
    from graphprune.runtime.llm import ort_logits

    evaluate_result(res, str(llama), benchmark=True, repeats=2, warmup=0)
    assert res.report["latency_ms"]["after"] > 0 and res.store.arrays, "the result is intact"
    ids = np.array([[3, 1, 4, 1, 5]], dtype=np.int64)
    logits = ort_logits(res.model, store=res.store)(ids)
    res.save(tmp_path / "p.onnx")
    saved = ort_logits(str(tmp_path / "p.onnx"))(ids)
    np.testing.assert_allclose(logits, saved, rtol=1e-5, atol=1e-5)

"""The language-model path on the bundled random-init LLaMA with GQA (4 query heads sharing 2
key/value heads, 2 layers): calibration from text, --target-params, the amp criterion, FLAP's
mean preservation through an MLP, block dropping on text, perplexity and greedy generation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

import graphprune
from graphprune.runtime.llm import greedy_generate, ort_logits, perplexity
from graphprune.cli.main import main
from graphprune.errors import UserError
from graphprune.calibration.text import text_calibration, token_windows
from graphprune.ir.inputs import input_specs, text_feeds
from helpers import run
from test_transformers import assert_equivalent_sizes, runs_at_sizes

TX = Path(__file__).resolve().parent.parent / "models" / "onnx" / "tx"
LLAMA = {e: TX / f"llama_gqa.{e}.onnx" for e in ("legacy", "dynamo")}
VOCAB = 100
WORDS = [f"w{i}" for i in range(VOCAB)]
TEXT = " ".join(WORDS[(i * 37 + i // 7) % VOCAB] for i in range(1200))


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    """A word-level tokenizer.json over the model's 100-token vocabulary."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = tokenizers.Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w0"))
    tok.pre_tokenizer = Whitespace()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(TEXT)
    return path


def _windows(seq=16, n=8, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, seq)).astype(np.int64)


# --------------------------------------------------------------------------- text calibration
def test_token_windows_and_feeds():
    w = token_windows(list(range(50)), 16)
    assert w.shape == (3, 16) and w[1, 0] == 16  # non-overlapping, tail dropped
    with pytest.raises(UserError, match="fewer than one window"):
        token_windows([1, 2, 3], 16)
    model = onnx.load(str(LLAMA["dynamo"]), load_external_data=False)
    feeds = text_feeds(input_specs(model), w)
    assert list(feeds) == [model.graph.input[0].name] and feeds[model.graph.input[0].name].dtype == np.int64


def test_feeds_fill_mask_positions_and_refuse_unknown():
    ids = helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["b", "s"])
    mask = helper.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["b", "s"])
    pos = helper.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, ["b", "s"])
    other = helper.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, ["b", 3])
    out = helper.make_tensor_value_info("y", onnx.TensorProto.INT64, ["b", "s"])
    g = helper.make_graph([helper.make_node("Add", ["input_ids", "attention_mask"], ["y"])],
                          "g", [ids, mask, pos], [out])
    f = text_feeds(input_specs(helper.make_model(g)), token_windows(list(range(20)), 5))
    assert (f["attention_mask"] == 1).all() and (f["position_ids"][2] == np.arange(5)).all()
    g.input.append(other)
    with pytest.raises(UserError, match="pixel_values"):
        text_feeds(input_specs(helper.make_model(g)), token_windows(list(range(20)), 5))


def test_text_calibration_reads_tokenizer(tokenizer_file, text_file):
    model = onnx.load(str(LLAMA["dynamo"]))
    cal = text_calibration(model, text_file, tokenizer_file, seq_len=32)
    assert cal.n == 1200 // 32
    first = next(iter(cal.feeds.values()))
    assert first[0, 0] == 0 and first[0, 1] == 37  # "w0 w37 ..." in order
    folder_cal = text_calibration(model, text_file, tokenizer_file.parent, seq_len=32)
    assert np.array_equal(next(iter(folder_cal.feeds.values())), first)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_cli_calib_text_flap_drop_blocks(tmp_path, tokenizer_file, text_file, exporter):
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    r = CliRunner().invoke(main, [str(LLAMA[exporter]), "--criterion", "flap", "--dims", "mlp",
                                  "--ratio", "0.5", "--drop-blocks", "1", "--calib-text",
                                  str(text_file), "--tokenizer", str(tokenizer_file),
                                  "--seq-len", "24", "-o", str(out), "--report", str(rep),
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    report = json.loads(rep.read_text())
    assert report["calibration"]["source"].startswith("text:calib.txt")
    assert report["calibration"]["samples"] == 1200 // 24
    assert sum(b["dropped"] for b in report["blocks"]) == 1
    assert report["params"]["after"] < report["params"]["before"]
    model = onnx.load(str(out))
    for seq in (3, 17):  # dynamic sequence length still works
        logits = run(model, {model.graph.input[0].name: _windows(seq, 2)})
        assert next(iter(logits.values())).shape == (2, seq, VOCAB)


def test_cli_calib_text_errors(tmp_path, tokenizer_file, text_file):
    base = [str(LLAMA["dynamo"]), "--criterion", "wanda", "-o", str(tmp_path / "p.onnx")]
    r = CliRunner().invoke(main, base + ["--calib-text", str(text_file)])
    assert r.exit_code == 2 and "needs --tokenizer" in r.output
    r = CliRunner().invoke(main, base + ["--calib-text", str(text_file), "--tokenizer",
                                         str(tokenizer_file), "--calib-random", "4"])
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(main, base + ["--calib-text", str(text_file), "--tokenizer",
                                         str(tokenizer_file), "--seq-len", "5000"])
    assert r.exit_code == 2 and "fewer than one window" in r.output
    assert not (tmp_path / "p.onnx").exists()


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("criterion,global_rank", [("magnitude", False), ("amp", True),
                                                   ("wanda", False), ("magnitude", True)])
def test_target_params_is_met_and_equals_consumer_zeroing(exporter, criterion, global_rank):
    model = onnx.load(str(LLAMA[exporter]))
    calib = {model.graph.input[0].name: _windows()} if criterion != "magnitude" else None
    res = graphprune.prune(model, criterion=criterion, dims="heads,mlp", target_params=0.25,
                           calib=calib, compensate="none", global_rank=global_rank,
                           allocate=False)  # uniform widths (allocation: tests/test_allocate.py)
    before, after = res.report["params"]["before"], res.report["params"]["after"]
    removed = 1 - after / before
    assert abs(removed - 0.25) < 0.05, removed
    mlp = [g for g in res.report["groups"] if g["kind"] == "mlp" and not g["frozen_reason"]]
    if not global_rank:  # uniform: every MLP loses the same share
        assert len({g["size_after"] for g in mlp}) == 1
    for g in res.report["groups"]:
        if g["kind"] == "head":  # GQA: whole kv groups of 2 query heads go together
            assert g["size_after"] >= 1
    assert_equivalent_sizes(model, res)


def test_target_params_budget_counts_dropped_blocks():
    model = onnx.load(str(LLAMA["dynamo"]))
    res = graphprune.prune(model, dims="mlp", target_params=0.1, drop_blocks=1)
    # one dropped MLP block alone is over 10 % of this tiny model: no width pruning is left
    assert all(g["size_after"] == g["size_before"] for g in res.report["groups"]
               if g["kind"] == "mlp")
    with pytest.raises(UserError, match="target-params"):
        graphprune.prune(model, target_params=1.5)


def test_amp_ranks_a_dead_mlp_unit_last():
    from graphprune.pipeline.pipeline import analyze_model

    model = onnx.load(str(LLAMA["dynamo"]))
    _, dg = analyze_model(model, dims=("mlp",))
    grp = next(g for g in dg.prunable_groups() if g.kind == "mlp")
    # zero one MLP unit's row in its down projection: it writes nothing into the stream
    from graphprune.calibration.stats import find_consumers

    cons = [c for c in find_consumers(dg) if dg.group_for(c.w, c.w_axis) is grp]
    assert cons
    for c in cons:
        init = next(i for i in model.graph.initializer if i.name == c.w)
        w = onnx.numpy_helper.to_array(init).copy()
        np.moveaxis(w, c.w_axis, 0)[5] = 0
        init.CopyFrom(onnx.numpy_helper.from_array(w, c.w))
    res = graphprune.prune(model, criterion="amp", dims="mlp", ratio=0.01,
                           calib={model.graph.input[0].name: _windows()})
    kept = {g["id"]: g for g in res.report["groups"]}[grp.id]
    assert kept["size_after"] == kept["size_before"] - 1
    assert 5 not in res.plan.keep[grp.id]


def test_flap_keeps_the_mean_of_the_pruned_mlp_output():
    """Bias compensation: the first pruned down projection's output keeps its calibration mean."""
    from graphprune.calibration.stats import find_consumers
    from graphprune.pipeline.pipeline import analyze_model

    model = onnx.load(str(LLAMA["dynamo"]))
    name = model.graph.input[0].name
    calib = {name: _windows(n=16)}
    _, dg = analyze_model(model, dims=("mlp",))
    order = {n.output[0]: k for k, n in enumerate(model.graph.node)}
    down = min((c for c in find_consumers(dg) if dg.group_for(c.w, c.w_axis) is not None),
               key=lambda c: order[c.node.output[0]])
    res = graphprune.prune(model, criterion="flap", dims="mlp", ratio=0.5, calib=calib)
    assert res.report["compensation"]
    y = down.node.output[0]
    means = []
    for m in (model, res.model):
        probe = onnx.ModelProto()
        probe.CopyFrom(m)
        probe.graph.output.append(helper.make_empty_tensor_value_info(y))
        means.append(run(probe, calib)[y].reshape(-1, 64).mean(0))
    zeroed = graphprune.prune(model, criterion="flap", dims="mlp", ratio=0.5, calib=calib,
                              compensate="none")
    probe = onnx.ModelProto()
    probe.CopyFrom(zeroed.model)
    probe.graph.output.append(helper.make_empty_tensor_value_info(y))
    uncompensated = run(probe, calib)[y].reshape(-1, 64).mean(0)
    np.testing.assert_allclose(means[1], means[0], atol=1e-4)
    assert np.abs(uncompensated - means[0]).max() > 1e-3  # the check can fail


# --------------------------------------------------------------------------- evaluation
def test_perplexity_of_uniform_logits_is_the_vocabulary_size():
    ppl = perplexity(lambda ids: np.zeros(ids.shape + (VOCAB,), np.float32), _windows())
    assert ppl == pytest.approx(VOCAB, rel=1e-9)
    # a model that always predicts the right next token has perplexity 1
    w = np.tile(np.arange(16), (4, 1))

    def oracle(ids):
        out = np.full(ids.shape + (VOCAB,), -30.0, np.float32)
        np.put_along_axis(out, ((ids + 1) % VOCAB)[..., None], 30.0, axis=-1)
        return out

    assert perplexity(oracle, w) == pytest.approx(1.0, abs=1e-9)
    assert greedy_generate(oracle, [3, 4], max_new=5) == [5, 6, 7, 8, 9]
    assert greedy_generate(oracle, [3, 4], max_new=5, stop_ids=(7,)) == [5, 6]


def test_ort_perplexity_on_bundled_llama_changes_when_pruned():
    fn = ort_logits(str(LLAMA["dynamo"]))
    w = _windows(seq=12, n=4)
    base = perplexity(fn, w)
    assert 1 < base < 10 * VOCAB
    model = onnx.load(str(LLAMA["dynamo"]))
    res = graphprune.prune(model, dims="heads,mlp", ratio=0.5)
    runs_at_sizes(model, res)
    assert perplexity(ort_logits(res.model), w) != pytest.approx(base)
    assert len(greedy_generate(fn, [1, 2, 3], max_new=4)) == 4


def test_cli_drop_blocks_scores_on_calib_npz(tmp_path):
    """--calib feeds block scoring even when the criterion itself reads no data."""
    model = onnx.load(str(LLAMA["dynamo"]))
    npz = tmp_path / "ids.npz"
    np.savez(npz, **{model.graph.input[0].name: _windows(seq=12, n=6)})
    rep = tmp_path / "r.json"
    r = CliRunner().invoke(main, [str(LLAMA["dynamo"]), "--ratio", "0", "--drop-blocks", "1",
                                  "--calib", str(npz), "-o", str(tmp_path / "p.onnx"),
                                  "--report", str(rep), "--quiet"])
    assert r.exit_code == 0, r.output
    report = json.loads(rep.read_text())
    assert report["calibration"]["source"] == "npz:ids.npz" and report["calibration"]["samples"] == 6
    assert sum(b["dropped"] for b in report["blocks"]) == 1

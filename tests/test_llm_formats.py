"""Decoder LLMs in the formats people deploy, on the bundled tiny random-init twins of
SmolLM2 (models/onnx/llm/, written by models/llm_formats.py): ONNX Runtime GenAI's builder in
fp32 and int4 (GroupQueryAttention, MatMulNBits, GatherBlockQuantized,
SkipSimplifiedLayerNormalization, genai_config.json), Hugging Face Optimum with past, and a
torch dynamo export with a flat KV cache. Each prunes to a valid model whose outputs equal the
consumer-zeroed original at other batch, sequence and past sizes, with the KV cache's head
axis shrinking in step with the key/value heads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import graphprune
from graphprune.ir.cache import cache_tensors
from graphprune.ir.inputs import cache_feeds, input_specs, text_feeds
from helpers import run, zero_consumers

LLM = Path(__file__).resolve().parent.parent / "models" / "onnx" / "llm"
FORMATS = ["genai-fp32", "genai-int4", "genai-int4-asym", "optimum", "dynamo-cache"]
# (batch, current tokens, past length): GroupQueryAttention takes batch 1 when both are > 1
SIZES = ((1, 5, 3), (3, 1, 4), (2, 6, 0), (1, 1, 0))
HEADS, KV, LAYERS = 4, 2, 2


def load(fmt: str) -> onnx.ModelProto:
    return onnx.load(str(LLM / fmt / "model.onnx"))


@pytest.fixture(scope="module", params=FORMATS)
def fmt(request):
    return request.param


def quantized(fmt: str) -> bool:
    return "int4" in fmt


def assert_cache_equivalent(model, res, sizes=SIZES, atol=1e-4):
    """Pruned == consumer-zeroed original on feeds that keep the cache contract; the pruned
    model gets the kept heads of the past and gives the kept heads of the present."""
    oracle = zero_consumers(model, res)
    specs = input_specs(model)
    for k, (b, s, p) in enumerate(sizes):
        feeds = cache_feeds(specs, seed=k, seq=s, batch=b, past=p)
        want = res.io.apply(run(oracle, feeds)) if res.io else run(oracle, feeds)
        out = run(res.model, res.io.apply(feeds) if res.io else feeds)
        assert list(out) == list(want)
        for name in want:
            assert out[name].shape == want[name].shape, name
            np.testing.assert_allclose(out[name], want[name], atol=atol, rtol=1e-4,
                                       err_msg=f"{name} at {b, s, p}")


def declared(model, name):
    vi = next(v for v in list(model.graph.input) + list(model.graph.output) if v.name == name)
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in vi.type.tensor_type.shape.dim]


# --------------------------------------------------------------------------- inputs
def test_cache_feeds_keep_the_contract(fmt):
    model = load(fmt)
    specs = input_specs(model)
    past = [s for s in specs if s.name.startswith("past_key_values.")]
    assert len(past) == 2 * LAYERS
    assert all(s.shape[1] == KV and s.shape[3] == 16 for s in past)  # genai: from the weights
    for b, s, p in SIZES:
        f = cache_feeds(specs, seq=s, batch=b, past=p)
        assert f["attention_mask"].shape == (b, p + s)
        if "position_ids" in f:
            assert (f["position_ids"][0] == np.arange(p, p + s)).all()
        out = run(model, f)
        assert out["logits"].shape == (b, s, 512)
        assert out["present.1.value"].shape == (b, KV, p + s, 16)


def test_text_feeds_give_an_empty_past(fmt):
    specs = input_specs(load(fmt))
    f = text_feeds(specs, np.arange(12, dtype=np.int64).reshape(2, 6))
    assert f["past_key_values.0.key"].shape == (2, KV, 0, 16)
    assert f["attention_mask"].shape == (2, 6)


def test_cache_tensors_are_recognized(fmt):
    cache = cache_tensors(load(fmt))
    assert sorted((c.io, c.layer, c.kind) for c in cache) == sorted(
        (io, i, k) for io in ("input", "output") for i in range(LAYERS) for k in ("key", "value"))


# --------------------------------------------------------------------------- pruning
def test_heads_and_mlp_equal_consumer_zeroing(fmt):
    """(int4 weights lose whole quantization blocks here: re-quantizing would move them)"""
    model = load(fmt)
    res = graphprune.prune(model, ratio=0.5, dims="heads,mlp", requantize=False)
    pruned = {g["kind"] for g in res.report["groups"]
              if g["frozen_reason"] is None and g["size_after"] < g["size_before"]}
    assert pruned == {"head", "mlp"}, res.report["groups"]
    for c in cache_tensors(model):  # the cache follows the kv heads: one of two kept
        assert declared(res.model, c.name)[1] == 1
    changes = {c["name"]: c for c in res.report["io_changes"]}
    assert set(changes) == {c.name for c in cache_tensors(model)}
    assert all(c["change"] == "resized" and c["before"] == 2 and c["after"] == 1
               for c in changes.values())
    assert res.report["params"]["after"] < res.report["params"]["before"]
    assert_cache_equivalent(model, res, atol=1e-3 if quantized(fmt) else 1e-4)


def test_hidden_size_prunes_to_a_runnable_model(fmt):
    model = load(fmt)
    res = graphprune.prune(model, ratio=0.5, dims="heads,mlp,hidden")
    kinds = {g["kind"]: (g["size_before"], g["size_after"]) for g in res.report["groups"]
             if g["frozen_reason"] is None}
    assert kinds["hidden"][1] < kinds["hidden"][0]
    specs = input_specs(model)
    for b, s, p in SIZES:
        out = run(res.model, res.io.apply(cache_feeds(specs, seq=s, batch=b, past=p)))
        assert out["logits"].shape == (b, s, 512)
        assert out["present.0.key"].shape == (b, 1, p + s, 16)


def test_protecting_the_cache_keeps_the_signature():
    model = load("genai-fp32")
    res = graphprune.prune(model, ratio=0.5, dims="heads,mlp", protect=["past_key_values.*"])
    assert not res.report.get("io_changes")
    assert all(g["size_after"] == g["size_before"] for g in res.report["groups"]
               if g["kind"] == "head")


# --------------------------------------------------------------------------- depth
def test_drop_blocks_removes_the_cache_pair(fmt):
    model = load(fmt)
    res = graphprune.prune(model, ratio=0.0, drop_blocks=2)
    dropped = [b for b in res.report["blocks"] if b["dropped"]]
    assert len(res.report["blocks"]) == 2 * LAYERS and len(dropped) == 2
    attention = sum(b["kind"] == "attention" for b in dropped)
    names = {c.name for c in cache_tensors(res.model)}
    assert len(names) == 4 * (LAYERS - attention)
    removed = {c["name"] for c in res.report["io_changes"] if c["change"] == "removed"}
    assert len(removed) == 4 * attention
    specs = input_specs(model)
    for b, s, p in SIZES:
        out = run(res.model, res.io.apply(cache_feeds(specs, seq=s, batch=b, past=p)))
        assert out["logits"].shape == (b, s, 512)


@pytest.mark.parametrize("layer", [0, 1])
def test_dropping_an_attention_block_renumbers_the_cache(fmt, layer):
    """The pair of the dropped layer goes, the other layer's pair is renamed to index 0, and
    the model computes what the same drop computes with every cache tensor kept."""
    from graphprune.ir import GraphView
    from graphprune.pipeline.stages import model_view
    from graphprune.transforms import depth
    from graphprune.transforms.cache_io import drop_dead_cache

    model = load(fmt)
    kept_all, pruned = onnx.ModelProto(), onnx.ModelProto()
    for m in (kept_all, pruned):
        m.CopyFrom(model)
        blocks = [b for b in depth.find_residual_blocks(model_view(m)) if b.kind == "attention"]
        assert len(blocks) == LAYERS
        blocks[layer].score = -1.0
        depth.drop_blocks(m, blocks, 1)
    io = drop_dead_cache(pruned)
    assert io.removed == {f"past_key_values.{layer}.{k}" for k in ("key", "value")} | {
        f"present.{layer}.{k}" for k in ("key", "value")}
    other = 1 - layer
    assert io.renamed == ({} if other == 0 else {
        f"{p}.1.{k}": f"{p}.0.{k}" for p in ("past_key_values", "present") for k in ("key", "value")})
    assert len(GraphView(pruned).graph_inputs) == len(GraphView(model).graph_inputs) - 2
    specs = input_specs(model)
    for b, s, p in SIZES:
        feeds = cache_feeds(specs, seed=1, seq=s, batch=b, past=p)
        want = io.apply(run(kept_all, feeds))
        out = run(pruned, io.apply(feeds))
        assert list(out) == list(want)
        for k in want:
            np.testing.assert_allclose(out[k], want[k], atol=1e-5, err_msg=k)


# --------------------------------------------------------------------------- quantized weights
def _nbits(model, part):
    return next(n for n in model.graph.node if n.op_type == "MatMulNBits" and f"/{part}/" in n.name)


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("fmt_q", ["genai-int4", "genai-int4-asym"])
def test_matmulnbits_prunes_rows_and_whole_blocks_byte_exact(fmt_q):
    """With requantize=False (--whole-blocks) N (gate/up rows) and K (down_proj columns) lose
    whole 32-wide blocks: codes, scales and zero points are sliced, never re-quantized, so the
    kept weights are identical."""
    from graphprune.ir import GraphView

    model = load(fmt_q)
    res = graphprune.prune(model, ratio=0.5, dims="mlp", requantize=False)
    mlp = [g for g in res.report["groups"] if g["kind"] == "mlp" and not g["frozen_reason"]]
    assert mlp and all(g["size_before"] == 4 and g["size_after"] == 2 for g in mlp)
    gate, down = _attrs(_nbits(res.model, "gate_proj")), _attrs(_nbits(res.model, "down_proj"))
    assert (gate["N"], gate["K"], down["N"], down["K"]) == (64, 64, 64, 64)
    before, after = GraphView(model), GraphView(res.model)
    grp = next(g for g in res.graph.groups if g.kind == "mlp" and g.id in res.plan.keep)
    name = next(m.tensor for m in grp.members if "down_proj" in m.tensor)
    kept = np.flatnonzero(np.isin(grp.unit_of[(name, 1)], res.plan.keep[grp.id]))
    np.testing.assert_array_equal(after.const_value(name), before.const_value(name)[:, kept])
    assert_cache_equivalent(model, res, atol=1e-3)


@pytest.mark.parametrize("fmt_q", ["genai-int4", "genai-int4-asym"])
def test_matmulnbits_requantizes_partial_blocks_within_one_step(fmt_q):
    """By default the MLP loses single channels; down_proj's blocks are quantized again (same
    bits and block size, each on an old block's grid where that loses less): every kept weight
    moves by at most one quantization step of its new block (half a step for asymmetric
    blocks), and the model stays close to the consumer-zeroed original."""
    from graphprune.ir import GraphView, quant

    model = load(fmt_q)
    res = graphprune.prune(model, ratio=0.3, dims="mlp")
    mlp = [g for g in res.report["groups"] if g["kind"] == "mlp" and not g["frozen_reason"]]
    assert all(g["size_before"] == 128 and g["size_after"] == 90 for g in mlp)
    before, after = GraphView(model), GraphView(res.model)
    for grp in (g for g in res.graph.groups if g.kind == "mlp" and g.id in res.plan.keep):
        name = next(m.tensor for m in grp.members if "down_proj" in m.tensor)
        kept = np.flatnonzero(np.isin(grp.unit_of[(name, 1)], res.plan.keep[grp.id]))
        w_new, w_old = after.const_value(name), before.const_value(name)[:, kept]
        parts = quant.read_parts(after.consts[name].proto, after.const_value)
        step = np.repeat(np.abs(parts.scales), 32, axis=1)[:, :len(kept)]
        bound = 1.0 if "asym" not in fmt_q else 0.5
        assert np.all(np.abs(w_new - w_old) <= bound * step + 1e-6)
        assert 0 < np.abs(w_new - w_old).max()  # it was re-quantized, not sliced
        assert _attrs(_nbits(res.model, "down_proj"))["K"] == 90
    oracle = zero_consumers(model, res)
    feeds = cache_feeds(input_specs(model), seq=5, batch=1, past=3)
    want, out = run(oracle, feeds)["logits"], run(res.model, feeds)["logits"]
    base = run(model, feeds)["logits"]
    # measured: 6.5 % of the logits' norm, against 87-92 % that removing the channels changes
    assert np.linalg.norm(out - want) < 0.1 * np.linalg.norm(want)
    assert np.linalg.norm(out - want) < 0.15 * np.linalg.norm(want - base)


def test_quantize_round_trip_and_block_slicing():
    """ir.quant: codes of a weight already on its grid come back unchanged, whole blocks slice
    exactly, a partial block re-quantizes within one step."""
    from graphprune.ir import quant

    rng = np.random.default_rng(0)
    for zp in ("", "zp"):
        qw = quant.QuantWeight("w::dequantized", "b", "s", zp, 6, 96, 4, 32)
        p = quant.quantize(rng.standard_normal((6, 96)), qw, {"scales": np.float32,
                                                              "zp": np.uint8})
        w = quant.dequantize(p)
        again = quant.quantize(w, qw, p.dtypes)
        np.testing.assert_array_equal(again.codes, p.codes)
        blocks = quant.take(p, 1, np.r_[0:32, 64:96])
        np.testing.assert_array_equal(quant.dequantize(blocks), w[:, np.r_[0:32, 64:96]])
        rows = quant.take(p, 0, np.array([1, 4]))
        np.testing.assert_array_equal(quant.dequantize(rows), w[[1, 4]])
        cols = np.r_[0:20, 40:96]
        part = quant.take(p, 1, cols)
        step = np.repeat(np.abs(part.scales), 32, axis=1)[:, :len(cols)]
        assert np.all(np.abs(quant.dequantize(part) - w[:, cols]) <= step + 1e-6)
        z = quant.zeroed(p, 1, np.arange(10, 50))
        deq = quant.dequantize(z)
        assert np.all(deq[:, 10:50] == 0) and np.array_equal(deq[:, 50:], w[:, 50:])


def test_int4_parameters_count_quantized_elements():
    from graphprune.analysis.cost import count_params
    from graphprune.ir import GraphView

    counts = {f: count_params(GraphView(load(f))) for f in ("genai-fp32", "genai-int4",
                                                           "genai-int4-asym")}
    assert len(set(counts.values())) == 1, counts  # 108,864: every weight once, tied once


# --------------------------------------------------------------------------- folders and configs
def _cli(args):
    from click.testing import CliRunner

    from graphprune.cli.main import main

    r = CliRunner().invoke(main, [str(a) for a in args] + ["--quiet"])
    assert r.exit_code == 0, r.output
    return r


def test_genai_folder_output_rewrites_the_config(tmp_path):
    import json

    out = tmp_path / "pruned"
    rep = tmp_path / "r.json"
    _cli([LLM / "genai-int4", "--ratio", "0.5", "--dims", "heads,mlp,hidden",
          "--drop-blocks", "1", "--out-dir", out, "--report", rep])
    files = sorted(f.name for f in out.iterdir() if not f.name.endswith(".data"))
    assert files == sorted(["model.onnx", "genai_config.json", "tokenizer.json",
                            "tokenizer_config.json", "chat_template.jinja"])
    assert len([f for f in out.iterdir() if f.name.startswith("model.onnx.")]) == 1  # its data
    src = json.loads((LLM / "genai-int4" / "genai_config.json").read_text())
    cfg = json.loads((out / "genai_config.json").read_text())
    report = json.loads(rep.read_text())
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    layers = len({c.layer for c in cache_tensors(model)})
    dec = cfg["model"]["decoder"]
    assert dec["num_key_value_heads"] == 1 and dec["num_attention_heads"] == 2
    assert dec["hidden_size"] == 32 and dec["head_size"] == 16
    assert dec["num_hidden_layers"] == layers
    dropped_attention = any(b["dropped"] and b["kind"] == "attention" for b in report["blocks"])
    assert layers == (1 if dropped_attention else 2)
    assert cfg["search"] == src["search"] and dec["inputs"] == src["model"]["decoder"]["inputs"]
    written = {w["file"]: w for w in report["side_files"]["written"]}
    assert written["genai_config.json"]["changes"]["model.decoder.num_key_value_heads"] == [2, 1]
    assert written["tokenizer.json"]["action"] == "copied"
    assert (out / "tokenizer.json").read_bytes() == (LLM / "genai-int4" / "tokenizer.json").read_bytes()


def test_optimum_folder_output_rewrites_config_json(tmp_path):
    import json

    out = tmp_path / "pruned"
    _cli([LLM / "optimum" / "model.onnx", "--ratio", "0.5", "--dims", "heads,mlp", "--out-dir",
          out])
    cfg = json.loads((out / "config.json").read_text())
    src = json.loads((LLM / "optimum" / "config.json").read_text())
    assert (cfg["num_key_value_heads"], cfg["num_attention_heads"]) == (1, 2)
    assert cfg["intermediate_size"] == 64 and cfg["head_dim"] == 16
    assert {k: v for k, v in cfg.items() if k not in ("num_key_value_heads", "num_attention_heads",
                                                     "intermediate_size")} == {
        k: v for k, v in src.items() if k not in ("num_key_value_heads", "num_attention_heads",
                                                 "intermediate_size")}
    assert (out / "vocab.json").exists() and (out / "merges.txt").exists()


def test_model_file_output_writes_configs_beside_it_elsewhere_only(tmp_path):
    import json

    rep = tmp_path / "r.json"
    _cli([LLM / "genai-fp32" / "model.onnx", "--ratio", "0.5", "--dims", "heads", "-o",
          tmp_path / "small.onnx", "--report", rep])
    cfg = json.loads((tmp_path / "genai_config.json").read_text())
    assert cfg["model"]["decoder"]["filename"] == "small.onnx"
    assert cfg["model"]["decoder"]["num_key_value_heads"] == 1
    assert not (tmp_path / "tokenizer.json").exists()  # a folder output copies those


def test_folder_output_refuses_the_input_folder(tmp_path):
    import shutil

    from click.testing import CliRunner

    from graphprune.cli.main import main

    src = tmp_path / "m"
    shutil.copytree(LLM / "genai-fp32", src)
    before = sorted(f.name for f in src.iterdir())
    r = CliRunner().invoke(main, [str(src), "--ratio", "0.5", "--out-dir", str(src)])
    assert r.exit_code == 2 and "input's folder" in r.output
    assert sorted(f.name for f in src.iterdir()) == before


def _genai():
    try:
        import onnxruntime_genai as og
    except ImportError:
        pytest.skip("onnxruntime-genai is not installed (pip install onnxruntime-genai)")
    return og


@pytest.mark.parametrize("fmt_g", ["genai-fp32", "genai-int4"])
def test_onnxruntime_genai_generates_from_the_pruned_folder(tmp_path, fmt_g):
    """onnxruntime_genai.Model loads the pruned folder and its greedy tokens are those of the
    pruned model decoded on its cache in plain ONNX Runtime."""
    og = _genai()
    from graphprune.runtime.llm import ort_generate

    out = tmp_path / "pruned"
    _cli([LLM / fmt_g, "--ratio", "0.5", "--dims", "heads,mlp", "--drop-blocks", "1",
          "--out-dir", out])
    model = og.Model(str(out))
    tok = og.Tokenizer(model)
    ids = [int(t) for t in tok.encode("The capital of France is")]
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 8, batch_size=1)
    gen = og.Generator(model, params)
    gen.append_tokens([ids])
    while not gen.is_done():
        gen.generate_next_token()
    got = [int(t) for t in gen.get_sequence(0)][len(ids):]
    assert got == ort_generate(str(out / "model.onnx"), ids, max_new=8)


# --------------------------------------------------------------------------- perplexity
def test_perplexity_and_generation_on_the_cache_equal_a_run_without_it(fmt):
    """Prefill with an empty past, then one token per step on the presents fed back: the
    same logits as whole windows, so the same perplexity and greedy tokens (pruned too)."""
    from graphprune.runtime.llm import Decoder, perplexity

    model = load(fmt)
    res = graphprune.prune(model, ratio=0.5, dims="heads,mlp")
    windows = np.random.default_rng(0).integers(3, 512, size=(3, 10)).astype(np.int64)
    for m in (model, res.model):
        dec = Decoder(m)
        assert dec.cache
        np.testing.assert_allclose(dec.incremental(windows, prefill=3), dec.logits(windows),
                                   atol=1e-4, rtol=1e-4)
        assert perplexity(dec.incremental, windows) == pytest.approx(
            perplexity(dec.logits, windows), rel=1e-5)
        prompt = windows[0, :5].tolist()
        assert dec.generate(prompt, 6) == dec.generate(prompt, 6, use_cache=False)


# --------------------------------------------------------------------------- calibration
TEXT = ("The capital of France is Paris. A tokenizer cuts text into pieces, and the model "
        "predicts the next piece from the ones before it. ") * 12


@pytest.mark.parametrize("criterion", ["amp", "flap", "wanda", "obspa"])
def test_calibrated_criteria_and_depth_scoring_on_text(fmt, criterion, tmp_path):
    """--calib-text on a KV-cache model: the windows go in with an empty past; every
    calibrated criterion finds its consumers (MatMulNBits ones too) with statistics, and
    compensation writes the quantized weights back."""
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    model = load(fmt)
    res = graphprune.prune(model, criterion=criterion, dims="heads,mlp", target_params=0.3,
                           drop_blocks=1, calib_text=str(text),
                           tokenizer=str(LLM / fmt / "tokenizer.json"), seq_len=16)
    cal = res.report["calibration"]
    notes = [n for n in cal["notes"] if not n.startswith("allocation:")]
    assert cal["calibrated"] and cal["consumers"] >= 2 and not notes, cal
    # widths measured at the outputs, except where a weight is block-quantized (the note says so)
    quantized = any(n.op_type == "MatMulNBits" for n in model.graph.node)
    assert res.report["target"]["allocation"] == ("obs" if quantized else "measured")
    assert len(cal["notes"]) - len(notes) == int(quantized)
    assert sum(b["dropped"] for b in res.report["blocks"]) == 1
    removed = 1 - res.report["params"]["after"] / res.report["params"]["before"]
    assert 0.2 < removed < 0.45, removed
    specs = input_specs(model)
    for b, s, p in SIZES:
        out = run(res.model, res.io.apply(cache_feeds(specs, seq=s, batch=b, past=p)))
        assert np.isfinite(out["logits"]).all() and out["logits"].shape == (b, s, 512)


def test_target_params_is_met_with_shared_rotary_tables():
    """GenAI shares one cos/sin cache across layers: the analysis' private copies of it do
    not count towards --target-params (a folder path is its model file)."""
    res = graphprune.prune(str(LLM / "genai-fp32"), dims="mlp", target_params=0.3)
    removed = 1 - res.report["params"]["after"] / res.report["params"]["before"]
    assert abs(removed - 0.3) < 0.005, removed  # counting the copies: 0.319
    assert res.report["input"].endswith("model.onnx")


def test_steps_compose_the_cache_heads_kept(tmp_path):
    """--steps: each round shrinks the cache again; validation and the report compare the
    kept heads of the original."""
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    res = graphprune.prune(load("genai-fp32"), ratio=0.5, dims="heads,mlp", steps=2,
                           criterion="obspa", calib_text=str(text), seq_len=16,
                           tokenizer=str(LLM / "genai-fp32" / "tokenizer.json"))
    axis, pos = res.io.kept["past_key_values.0.key"]
    assert axis == 1 and len(pos) == 1 and res.report["fidelity"]

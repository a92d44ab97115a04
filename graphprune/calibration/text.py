"""Text for language models: tokenizers, calibration windows and the inputs a graph expects.

A language model's calibration is a few hundred to a few thousand tokens of ordinary text. It is
tokenized once, cut into windows of ``seq_len`` tokens (the last partial window is dropped,
windows do not overlap) and handed to the data-aware criteria like any other calibration batch:
one sample per window.

Tokenizers come from a ``tokenizer.json`` file or a folder holding one (read with the light
``tokenizers`` package), else from a Hugging Face tokenizer folder via ``transformers`` when it is
installed. Nothing is downloaded.

Graph inputs are filled by name and type (`graphprune.ir.inputs.text_feeds`): the integer input
named like ``input_ids`` (or the only integer input) gets the token windows, ``attention_mask``
ones, ``position_ids`` 0..seq-1, ``token_type_ids`` zeros. A graph with any other required input
cannot be fed from text and is refused with a clear message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..errors import UserError
from ..ir.inputs import input_specs, text_feeds
from .data import Calibration

DEFAULT_SEQ = 128
MAX_CALIB_TOKENS = 1 << 20


def load_tokenizer(path) -> Callable[[str], list[int]]:
    """A function text -> token ids, from a tokenizer.json file or a tokenizer folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--tokenizer {p}: not found (a tokenizer.json file or a folder with one)")
    tj = p / "tokenizer.json" if p.is_dir() else p
    if tj.is_file():
        try:
            from tokenizers import Tokenizer
        except ImportError:
            Tokenizer = None
        if Tokenizer is not None:
            try:
                tok = Tokenizer.from_file(str(tj))
            except Exception as e:  # noqa: BLE001 - any parse error is bad input
                raise UserError(f"--tokenizer {tj}: cannot read it ({e})") from None
            return lambda text: tok.encode(text, add_special_tokens=False).ids
    if p.is_dir():
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError(f"--tokenizer {p}: no tokenizer.json there and transformers is not "
                            "installed (pip install tokenizers or transformers)") from None
        try:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"--tokenizer {p}: cannot load a tokenizer from it ({e})") from None
        return lambda text: tok(text, add_special_tokens=False)["input_ids"]
    raise UserError(f"--tokenizer {p}: not a tokenizer.json file; install tokenizers to read it")


def token_windows(ids, seq_len: int = DEFAULT_SEQ, limit: int | None = None) -> np.ndarray:
    """Non-overlapping windows [n, seq_len] of a token stream (the tail is dropped)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if seq_len < 2:
        raise UserError(f"--seq-len must be >= 2, got {seq_len}")
    n = len(ids) // seq_len
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise UserError(f"calibration text has {len(ids)} tokens, fewer than one window of "
                        f"{seq_len}; give more text or a smaller --seq-len")
    return ids[:n * seq_len].reshape(n, seq_len)


def read_text(path) -> str:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"--calib-text {p}: cannot read it ({e.strerror})") from None
    if not text.strip():
        raise UserError(f"--calib-text {p}: the file is empty")
    return text


def text_calibration(model: onnx.ModelProto, text_file, tokenizer, seq_len: int = DEFAULT_SEQ,
                     max_tokens: int = MAX_CALIB_TOKENS):
    """A `Calibration` of token windows cut from a text file."""
    if tokenizer is None:
        raise UserError("--calib-text needs --tokenizer (a tokenizer.json or tokenizer folder)")
    encode = load_tokenizer(tokenizer) if not callable(tokenizer) else tokenizer
    ids = encode(read_text(text_file))[:max_tokens]
    windows = token_windows(ids, seq_len)
    return Calibration(text_feeds(input_specs(model), windows),
                       source=f"text:{Path(text_file).name} ({windows.size} tokens, "
                              f"{len(windows)}×{seq_len})")

"""Text for language models: tokenizers, calibration windows and the inputs a graph expects.

A language model's calibration is a few hundred to a few thousand tokens of ordinary text. It is
tokenized once, cut into windows of ``seq_len`` tokens (the last partial window is dropped,
windows do not overlap) and handed to the data-aware criteria like any other calibration batch:
one sample per window.

Tokenizers come from a ``tokenizer.json`` file or a folder holding one (read with the light
``tokenizers`` package), else from a Hugging Face tokenizer folder via ``transformers`` when it is
installed. Nothing is downloaded.

Graph inputs are filled by name and type: the integer input named like ``input_ids`` (or the
only integer input) gets the token windows, ``attention_mask`` ones, ``position_ids`` 0..seq-1,
``token_type_ids`` zeros. A graph with any other required input cannot be fed from text and is
refused with a clear message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from .errors import UserError

DEFAULT_SEQ = 128
MAX_CALIB_TOKENS = 1 << 20

# onnx TensorProto element types of integer inputs
_INT_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


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


def graph_inputs(model) -> list[tuple[str, type]]:
    """(name, numpy dtype) of the inputs a text model is fed: a ModelProto's graph inputs that
    are not initializers, or an ONNX Runtime session's inputs."""
    if isinstance(model, onnx.ModelProto):
        inits = {i.name for i in model.graph.initializer}
        return [(i.name, _INT_TYPES.get(i.type.tensor_type.elem_type, np.float32))
                for i in model.graph.input if i.name not in inits]
    ort_types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
    return [(i.name, ort_types.get(i.type, np.float32)) for i in model.get_inputs()]


def feeds_for_windows(model, windows: np.ndarray) -> dict[str, np.ndarray]:
    """Graph inputs for token windows [n, seq] (see the module docstring for the names);
    `model` is a ModelProto, an ORT session or `graph_inputs`' list."""
    inputs = model if isinstance(model, list) else graph_inputs(model)
    ints = [(name, dt) for name, dt in inputs if dt in (np.int64, np.int32)]
    ids_name = next((name for name, _ in ints if "ids" in name.lower()
                     and "type" not in name.lower() and "position" not in name.lower()),
                    ints[0][0] if len(ints) == 1 else None)
    if ids_name is None:
        raise UserError("--calib-text: the model has no integer token-id input (inputs: "
                        f"{[name for name, _ in inputs]})")
    n, s = windows.shape
    feeds = {}
    for name, dt in inputs:
        low = name.lower()
        if name == ids_name:
            feeds[name] = windows.astype(dt)
        elif "mask" in low:
            feeds[name] = np.ones((n, s), dtype=dt)
        elif "position" in low:
            feeds[name] = np.broadcast_to(np.arange(s, dtype=dt), (n, s)).copy()
        elif "type" in low:
            feeds[name] = np.zeros((n, s), dtype=dt)
        else:
            raise UserError(f"--calib-text: cannot fill model input {name!r} from text "
                            "(known: token ids, attention_mask, position_ids, token_type_ids)")
    return feeds


def text_calibration(model: onnx.ModelProto, text_file, tokenizer, seq_len: int = DEFAULT_SEQ,
                     max_tokens: int = MAX_CALIB_TOKENS):
    """A `graphprune.calib.Calibration` of token windows cut from a text file."""
    from .calib import Calibration

    if tokenizer is None:
        raise UserError("--calib-text needs --tokenizer (a tokenizer.json or tokenizer folder)")
    encode = load_tokenizer(tokenizer) if not callable(tokenizer) else tokenizer
    ids = encode(read_text(text_file))[:max_tokens]
    windows = token_windows(ids, seq_len)
    return Calibration(feeds_for_windows(model, windows),
                       source=f"text:{Path(text_file).name} ({windows.size} tokens, "
                              f"{len(windows)}×{seq_len})")

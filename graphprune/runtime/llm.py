"""Language-model checks of a (pruned) ONNX model: perplexity and greedy generation.

Both take a *logits function* ``ids [batch, seq] (int64) -> logits [batch, seq, vocab]`` so the
same numbers come out for an ONNX model in ONNX Runtime (`ort_logits`) and for any other
runtime (a torch model in a benchmark), which is what makes them comparable.

Perplexity is exp(mean negative log-likelihood of every next token) over non-overlapping windows
of ``seq_len`` tokens; each window starts with no context, so the numbers compare between
models at the same window length, not with numbers measured on other windows.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from ..ir.inputs import input_specs, text_feeds
from .session import session

LogitsFn = Callable[[np.ndarray], np.ndarray]


def ort_logits(model, threads: int = 0, output: str | None = None, store=None) -> LogitsFn:
    """Logits function of an ONNX causal LM (path or ModelProto; `store`: the weights of a
    lazily loaded one, e.g. a `PruneResult`'s) whose only input is token ids (other text
    inputs are filled like `graphprune.ir.inputs.text_feeds`)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model),
                                                                       load_external_data=False)
    specs = input_specs(proto)  # read once: every call (each generated token) reuses them
    sess = session(model if isinstance(model, onnx.ModelProto) else str(model), threads=threads,
                   store=store)
    name = output or sess.get_outputs()[0].name

    def run(ids: np.ndarray) -> np.ndarray:
        return sess.run([name], text_feeds(specs, np.asarray(ids)))[0]

    return run


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def nll_sum(logits_fn: LogitsFn, windows: np.ndarray, batch: int = 4) -> tuple[float, int]:
    """Σ negative log-likelihood of tokens 1..seq-1 of every window, and how many were scored."""
    total, count = 0.0, 0
    for s in range(0, len(windows), batch):
        ids = windows[s:s + batch]
        logp = _log_softmax(logits_fn(ids)[:, :-1])
        target = ids[:, 1:]
        total -= float(np.take_along_axis(logp, target[..., None], axis=-1).sum())
        count += target.size
    return total, count


def perplexity(logits_fn: LogitsFn, windows: np.ndarray, batch: int = 4) -> float:
    """exp(mean NLL) over windows [n, seq] of token ids."""
    total, count = nll_sum(logits_fn, np.asarray(windows, dtype=np.int64), batch)
    return float(np.exp(total / max(count, 1)))


def greedy_generate(logits_fn: LogitsFn, prompt_ids, max_new: int = 20,
                    stop_ids: tuple[int, ...] = ()) -> list[int]:
    """Greedy continuation (no KV cache: the whole sequence runs each step; fine for short
    prompts). Returns the new token ids only, up to and excluding a stop id."""
    ids = list(int(i) for i in prompt_ids)
    new: list[int] = []
    for _ in range(max_new):
        nxt = int(np.argmax(logits_fn(np.asarray([ids], dtype=np.int64))[0, -1]))
        if nxt in stop_ids:
            break
        ids.append(nxt)
        new.append(nxt)
    return new

"""Language-model checks of a (pruned) ONNX model: perplexity and greedy generation.

Both take a *logits function* ``ids [batch, seq] (int64) -> logits [batch, seq, vocab]`` so the
same numbers come out for an ONNX model in ONNX Runtime (`ort_logits`) and for any other
runtime (a torch model in a benchmark), which is what makes them comparable.

Perplexity is exp(mean negative log-likelihood of every next token) over non-overlapping windows
of ``seq_len`` tokens; each window starts with no context, so the numbers compare between
models at the same window length, not with numbers measured on other windows.

A decoder with a KV cache (past_key_values / present graph I/O) runs either on whole windows
with an empty past (a prefill: `ort_logits`), or the way it is deployed (`Decoder.incremental`,
`ort_logits(..., incremental=True)`, `ort_generate`): a prefill of the first tokens with an
empty past, then one token at a time, each step feeding the previous step's presents back as
its past. Both give the same logits.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from ..ir.cache import cache_tensors
from ..ir.inputs import cache_feeds, has_cache, input_specs, text_feeds
from ..ir.load import graph_of
from .session import run_options, session

LogitsFn = Callable[[np.ndarray], np.ndarray]


class Decoder:
    """A causal LM (path or ModelProto; `store`: the weights of a lazily loaded one) in ONNX
    Runtime, with or without a KV cache."""

    def __init__(self, model, threads: int = 0, output: str | None = None, store=None):
        proto = graph_of(model)
        self.specs = input_specs(proto)  # read once: every call (each token) reuses them
        self.sess = session(model if isinstance(model, onnx.ModelProto) else str(model),
                            threads=threads, store=store)
        self.output = output or self.sess.get_outputs()[0].name
        self.cache = has_cache(self.specs)
        cache = cache_tensors(proto)
        present = {(c.layer, c.kind): c.name for c in cache if c.io == "output"}
        self.present_of = {c.name: present[(c.layer, c.kind)] for c in cache
                           if c.io == "input" and (c.layer, c.kind) in present}

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits of whole sequences (a cache model starts from an empty past)."""
        return self.sess.run([self.output], text_feeds(self.specs, np.asarray(ids)),
                             run_options())[0]

    def step(self, ids: np.ndarray, pasts: dict | None) -> tuple[np.ndarray, dict]:
        """One run on `ids` after the cache `pasts` (None: empty); (logits, the new cache)."""
        ids = np.asarray(ids, dtype=np.int64)
        if pasts is None:
            feeds = text_feeds(self.specs, ids)
        else:
            feeds = cache_feeds(self.specs, ids=ids, pasts=pasts)
        names = [self.output] + list(self.present_of.values())
        outs = dict(zip(names, self.sess.run(names, feeds, run_options())))
        return outs[self.output], {p: outs[q] for p, q in self.present_of.items()}

    def incremental(self, ids: np.ndarray, prefill: int = 1) -> np.ndarray:
        """Logits of whole sequences computed as deployed: the first `prefill` tokens with
        an empty past, then one token per step on the cache."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self.cache:
            return self.logits(ids)
        out, pasts = self.step(ids[:, :prefill], None)
        parts = [out]
        for t in range(prefill, ids.shape[1]):
            out, pasts = self.step(ids[:, t:t + 1], pasts)
            parts.append(out)
        return np.concatenate(parts, axis=1)

    def generate(self, prompt_ids, max_new: int = 20, stop_ids: tuple[int, ...] = (),
                 use_cache: bool = True) -> list[int]:
        """Greedy continuation: with a cache, the prompt is prefilled once and every new token
        is one step; without (or `use_cache` False), the whole sequence runs each step."""
        if not (self.cache and use_cache):
            return greedy_generate(self.logits, prompt_ids, max_new, stop_ids)
        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        out, pasts = self.step(ids, None)
        new: list[int] = []
        for _ in range(max_new):
            nxt = int(np.argmax(out[0, -1]))
            if nxt in stop_ids:
                break
            new.append(nxt)
            if len(new) == max_new:
                break
            out, pasts = self.step(np.asarray([[nxt]], dtype=np.int64), pasts)
        return new


def ort_logits(model, threads: int = 0, output: str | None = None,
               incremental: bool = False, store=None) -> LogitsFn:
    """Logits function of an ONNX causal LM (path or ModelProto; `store`: the weights of a
    lazily loaded one, e.g. a `PruneResult`'s) whose only input is token ids
    (other text inputs are filled like `graphprune.ir.inputs.text_feeds`; a KV cache starts
    empty). `incremental`: computed token by token on the cache (see `Decoder`)."""
    dec = Decoder(model, threads=threads, output=output, store=store)
    return dec.incremental if incremental else dec.logits


def ort_generate(model, prompt_ids, max_new: int = 20, stop_ids: tuple[int, ...] = (),
                 threads: int = 0, use_cache: bool = True) -> list[int]:
    """Greedy continuation in ONNX Runtime (on the KV cache when the model has one)."""
    return Decoder(model, threads=threads).generate(prompt_ids, max_new, stop_ids, use_cache)


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

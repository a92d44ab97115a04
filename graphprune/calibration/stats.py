"""The activation statistics the data-aware criteria and the compensation need.

What is measured (`StatsCollector`): for every *consumer* — a Conv (group 1), Gemm or MatMul
whose constant weight has a contraction axis (ROLE_IN) in a prunable group — running sums over
the channels of its activation input: count, Σx, Σx² and the channel Gram matrix Σ x xᵀ. For a
Conv every spatial position of every sample counts as one sample of the C-vector, so the Gram
matrix is C×C (the im2col Gram would be C·k² wide). The pipeline runs the model in ONNX Runtime
in batches with the consumer inputs exposed as extra outputs and hands each batch's activations
to the collector; only the sums are kept, never the activations, so memory is one batch of
activations plus C² per consumer input.

Data-free statistics (`data_free_stats`) stand in when there is no calibration data: when the
consumer's input comes (through Relu / Identity / Clip / Dropout) from a BatchNormalization,
each channel is a Gaussian with mean β and variance γ² (what the BN was trained to output),
pushed analytically through the ReLU (rectified-Gaussian moments), channels independent;
otherwise zero mean and identity covariance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import erf, pi, sqrt
from typing import Protocol

import numpy as np
import onnx

from ..analysis.graph import DependencyGraph
from ..ir import GraphView, attr
from ..ops.registry import ROLE_IN
from .data import Calibration

BATCH = 32
# Above this width the Gram matrix is not kept (C² float64 per consumer input): those
# consumers keep only the diagonal, and OBS uses a diagonal Hessian for them.
MAX_GRAM = 8192
DAMP = 1e-2  # λ: damping of H relative to its mean diagonal


class Runner(Protocol):
    """Runs a model for the passes that need activations (supplied by the pipeline; the
    implementation lives in `graphprune.runtime`, which only the pipeline imports)."""

    def taps(self, model: onnx.ModelProto, names: list[str], feeds: dict,
             batch: int | None = None):
        """Yield (feeds of one batch, {name: activation}) over the samples in `feeds`."""

    def each(self, model: onnx.ModelProto, names: list[str], feeds_list: list[dict]):
        """Yield {name: value} for every feeds dict of `feeds_list` (one session for all)."""

    def run(self, model: onnx.ModelProto, feeds: dict, names: list[str] | None = None) -> dict:
        """Outputs of one run."""

    def segments(self, model: onnx.ModelProto, feeds: dict, batch: int) -> "Segments":
        """A stage-by-stage walk of `model` over the samples in `feeds` (see `Segments`)."""

    def probe(self, model: onnx.ModelProto, weights: dict, feeds: dict) -> "Probe":
        """Repeated runs of `model` on `feeds` with some of `weights` (name -> original
        value) swapped (see `Probe`)."""


class Probe(Protocol):
    """One model run many times on fixed inputs with some weights swapped (allocation from
    measured sensitivity)."""

    def run(self, swaps: dict | None = None) -> list[dict]:
        """{output name: value} per batch, with the weights in `swaps` replaced, the rest
        original."""


class Segments(Protocol):
    """A model run piece by piece over fixed calibration batches (sequential reconstruction
    and statistics correction walk the graph stage by stage in about one forward pass)."""

    def advance(self, taps: list[str], overrides: dict | None = None,
                adds: dict | None = None):
        """Yield {tap: value} per batch, running only the nodes no earlier call ran, with
        `overrides` (constant name -> new value) and `adds` (tensor -> constant added after
        its node) applied to them. Consume it to the end."""

    def update(self, name: str, fn) -> None:
        """Replace the kept values of tensor `name` (read by nodes not run yet) by fn(value)."""


# --------------------------------------------------------------------------- consumers
@dataclass
class Consumer:
    """A layer that contracts a prunable channel axis with a constant weight.

    `x`/`x_axis`: the activation input and its channel axis; `w`/`w_axis`: the weight and its
    contraction axis (position j of both is the same channel); `out_axes`: the weight axes that
    index outputs (rows of the matrix view); `bias`: the bias input name or "".
    """

    node: onnx.NodeProto
    op: str
    x: str
    x_axis: int
    w: str
    w_axis: int
    bias: str
    out_axis: int  # the weight axis that is the output channel (for slicing a new bias)

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as rows × in-channels: Conv rows are (out channel, kernel offset)."""
        return np.moveaxis(w, self.w_axis, -1).reshape(-1, w.shape[self.w_axis])

    def unmatrix(self, m: np.ndarray, shape) -> np.ndarray:
        moved = list(np.moveaxis(np.empty(shape, dtype=np.int8), self.w_axis, -1).shape)
        return np.moveaxis(m.reshape(moved), -1, self.w_axis)

    def row_outputs(self, shape) -> np.ndarray:
        """For every matrix row, the output channel it feeds (bias index): rows enumerate the
        weight's other axes in order, so the output axis' index is a digit of the row number."""
        rest = [int(d) for k, d in enumerate(shape) if k != self.w_axis]
        k = self.out_axis - (self.out_axis > self.w_axis)
        rows = np.arange(int(np.prod(rest, dtype=np.int64)))
        return (rows // int(np.prod(rest[k + 1:], dtype=np.int64))) % rest[k]


def find_consumers(dg: DependencyGraph) -> list[Consumer]:
    """Every Conv/Gemm/MatMul whose constant weight has a ROLE_IN axis in a prunable group
    (and every MatMulNBits: its logical weight W [N, K] is the matrix, K the input axis)."""
    view = dg.view
    in_members = {(m.tensor, m.axis) for g in dg.prunable_groups() for m in g.members
                  if m.role == ROLE_IN}
    out = []
    for node in view.graph.node:
        qw = view.quantized(node) if node.op_type == "MatMulNBits" else None
        if qw is not None and view.rank(node.input[0]):
            ins = list(node.input) + [""] * 6
            c = Consumer(node, "MatMulNBits", node.input[0], view.rank(node.input[0]) - 1,
                         qw.name, 1, ins[5], 0)
            if (c.w, c.w_axis) in in_members:
                out.append(c)
            continue
        if node.domain not in ("", "ai.onnx"):
            continue
        c = None
        if node.op_type == "Conv" and int(attr(node, "group", 1)) == 1 and len(node.input) > 1:
            c = Consumer(node, "Conv", node.input[0], 1, node.input[1], 1,
                         node.input[2] if len(node.input) > 2 else "", 0)
        elif node.op_type == "Gemm" and len(node.input) > 1:
            ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
            c = Consumer(node, "Gemm", node.input[0], 0 if ta else 1, node.input[1],
                         1 if tb else 0, node.input[2] if len(node.input) > 2 else "",
                         0 if tb else 1)
            if float(attr(node, "alpha", 1.0)) != 1.0:
                c = None  # the matrix view below would ignore alpha
        elif node.op_type == "MatMul":
            a, b = node.input
            ra, rb = view.rank(a), view.rank(b)
            if ra is not None and rb is not None and rb >= 2 and b in view.consts \
                    and a not in view.consts:
                c = Consumer(node, "MatMul", a, ra - 1, b, rb - 2, "", rb - 1)
        if c is None or (c.w, c.w_axis) not in in_members or c.x in view.consts:
            continue
        if not _is_float(view, c.w) or view.consts[c.w].kind == "constant_of_shape":
            continue
        out.append(c)
    return out


def _is_float(view: GraphView, name: str) -> bool:
    c = view.consts.get(name)
    return c is not None and np.issubdtype(np.dtype(c.dtype), np.floating)


# --------------------------------------------------------------------------- statistics
@dataclass
class ChannelStats:
    """Running sums over the channels of one activation axis."""

    n: float = 0.0
    s1: np.ndarray | None = None
    s2: np.ndarray | None = None  # Σx² per channel (the Gram diagonal)
    gram: np.ndarray | None = None  # Σ x xᵀ (None above `max_gram` channels)
    source: str = "calibration"  # "calibration" | "batchnorm" | "identity"
    max_gram: int = MAX_GRAM  # 0: no Gram matrix (criteria that read only the diagonal)

    def add(self, rows: np.ndarray) -> None:
        r = rows.astype(np.float64, copy=False)
        if self.s1 is None:
            c = r.shape[1]
            self.s1, self.s2 = np.zeros(c), np.zeros(c)
            self.gram = np.zeros((c, c)) if c <= self.max_gram else None
        self.n += r.shape[0]
        self.s1 += r.sum(0)
        self.s2 += np.einsum("ij,ij->j", r, r)
        if self.gram is not None:
            self.gram += r.T @ r

    @property
    def mean(self) -> np.ndarray:
        return self.s1 / max(self.n, 1)

    @property
    def second(self) -> np.ndarray:
        """E[x²] per channel."""
        return self.s2 / max(self.n, 1)

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.second - self.mean ** 2, 0.0)

    @property
    def rms(self) -> np.ndarray:
        """‖X_j‖₂ per channel, divided by √n so it does not grow with the calibration size."""
        return np.sqrt(self.second)

    def hessian(self) -> np.ndarray:
        """E[x xᵀ] (diagonal when the Gram matrix was too wide to keep)."""
        if self.gram is not None:
            return self.gram / max(self.n, 1)
        return np.diag(self.second)


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    """An activation as samples × channels (every other axis becomes samples)."""
    return np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])


def stat_taps(consumers: list[Consumer]) -> list[tuple[str, int]]:
    """The (activation, channel axis) pairs the statistics are measured on."""
    return sorted({(c.x, c.x_axis) for c in consumers})


def collect_stats(model: onnx.ModelProto, consumers: list[Consumer], cal: Calibration,
                  runner: Runner, batch: int = BATCH,
                  gram: bool = True) -> dict[tuple[str, int], ChannelStats]:
    """Run the model on the calibration feeds in batches (through `runner`); sums per
    consumer input channel (without the Gram matrices unless `gram`: at LLM widths they cost
    more time and memory than the model itself)."""
    keys = stat_taps(consumers)
    if not keys:
        return {}
    names = sorted({t for t, _ in keys})
    stats = {k: ChannelStats(max_gram=MAX_GRAM if gram else 0) for k in keys}
    for _, outs in runner.taps(model, names, cal.feeds, batch):
        for (t, ax), st in stats.items():
            st.add(_rows(np.asarray(outs[t]), ax))
    return stats


# --------------------------------------------------------------------------- data-free
PASS_THROUGH = {"Relu", "Identity", "Dropout", "Clip"}


def _rectified_moments(mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[max(0, z)] and E[max(0, z)²] for z ~ N(mu, sigma²), elementwise."""
    sigma = np.maximum(np.abs(sigma), 1e-12)
    a = mu / sigma
    phi = np.exp(-0.5 * a * a) / sqrt(2 * pi)
    cdf = 0.5 * (1.0 + np.vectorize(erf)(a / sqrt(2)))
    m1 = mu * cdf + sigma * phi
    m2 = (mu * mu + sigma * sigma) * cdf + mu * sigma * phi
    return m1, np.maximum(m2, m1 * m1)


def data_free_stats(dg: DependencyGraph, consumers: list[Consumer]) -> dict:
    """Per consumer input: moments from a preceding BatchNormalization, else identity."""
    view = dg.view
    out: dict[tuple[str, int], ChannelStats] = {}
    for c in consumers:
        key = (c.x, c.x_axis)
        if key in out:
            continue
        size = view.consts[c.w].shape[c.w_axis]
        t, relu = c.x, False
        node = view.producer.get(t)
        while node is not None and node.op_type in PASS_THROUGH:
            relu = relu or node.op_type in ("Relu", "Clip")
            t = node.input[0]
            node = view.producer.get(t)
        st = ChannelStats(n=1.0, source="identity")
        if (node is not None and node.op_type == "BatchNormalization" and c.x_axis == 1
                and all(i in view.consts for i in node.input[1:3])):
            gamma = np.asarray(view.const_value(node.input[1]), np.float64).reshape(-1)
            beta = np.asarray(view.const_value(node.input[2]), np.float64).reshape(-1)
            if len(gamma) == size:
                if relu:
                    m1, m2 = _rectified_moments(beta, gamma)
                else:
                    m1, m2 = beta, beta * beta + gamma * gamma
                st.s1, st.s2 = m1, m2
                st.gram = np.outer(m1, m1) + np.diag(m2 - m1 * m1) if size <= MAX_GRAM else None
                st.source = "batchnorm"
        if st.source == "identity":
            st.s1, st.s2 = np.zeros(size), np.ones(size)
            st.gram = np.eye(size) if size <= MAX_GRAM else None
        out[key] = st
    return out


@dataclass
class CalibContext:
    """What the data-aware criteria and the compensation pass share for one pruning run."""

    consumers: list[Consumer] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    calibrated: bool = False
    notes: list[str] = field(default_factory=list)
    source: str = ""
    samples: int = 0
    # the samples themselves, for criteria that run the model (lrp), and the runner to do it
    calibration: Calibration | None = None
    runner: Runner | None = None


def augmented_hessian(st: ChannelStats, damp: float = DAMP) -> np.ndarray:
    """[[E xxᵀ + λ·mean(diag)·I, E x], [E xᵀ, 1]]: the Hessian of a layer with a bias input."""
    h = st.hessian()
    c = h.shape[0]
    ha = np.empty((c + 1, c + 1))
    ha[:c, :c] = h
    ha[:c, c] = ha[c, :c] = st.mean
    ha[c, c] = 1.0
    d = float(np.mean(np.diag(h))) if c else 0.0
    ha[np.arange(c), np.arange(c)] += damp * (d if d > 0 else 1.0)
    # the bias row also gets a little damping so a constant channel cannot make H singular
    ha[c, c] += damp
    return ha


def data_free_context(dg: DependencyGraph) -> CalibContext:
    """Consumers with statistics derived from the model's own BatchNorm parameters."""
    consumers = find_consumers(dg)
    return CalibContext(consumers=consumers, stats=data_free_stats(dg, consumers))


def build_context(dg: DependencyGraph, cal: Calibration | None, runner: Runner | None = None,
                  data_free: bool = False, batch: int = BATCH, stats: bool = True,
                  gram: bool = True) -> CalibContext:
    """Consumers and their statistics: measured on `cal` through `runner` (when `stats`; the
    Gram matrices only with `gram`), else (with `data_free`) derived from the model's own
    BatchNorm parameters."""
    ctx = CalibContext(consumers=find_consumers(dg), calibration=cal, runner=runner)
    if cal is not None:
        ctx.calibrated = True
        if stats:
            ctx.stats = collect_stats(dg.view.model, ctx.consumers, cal, runner, batch, gram)
    elif data_free:
        ctx.stats = data_free_stats(dg, ctx.consumers)
    return ctx

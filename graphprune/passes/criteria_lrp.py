"""``lrp``: Layer-wise Relevance Propagation importance ("Pruning by Explaining", Yeom et al. 2021).

Weight magnitude says how big a filter is; activation statistics say how much signal flows
through it. LRP asks what the network's *decision* owes to each unit: the logit of the target
class is redistributed backward, layer by layer, onto the neurons that produced it, so that
(up to what biases and the stabilizer absorb) the relevance entering a layer equals the
relevance leaving it. A filter whose output maps carry little relevance over a few samples per
class can go with the least effect on the predictions, which is what the paper found to beat
weight- and gradient-based criteria without fine-tuning.

How it runs on an ONNX graph (numpy; relevance in float64, conv products in float32 like the
activations ORT computed):

1. *Forward*: the model runs in ONNX Runtime on the calibration feeds in batches (``BATCH``
   samples, or the model's static batch) with every intermediate tensor exposed as an extra
   graph output, as `graphprune.calib.collect_stats` does. Only one batch of activations and
   relevances is alive at a time.
2. *Initial relevance*: the target-class logit, zero elsewhere. The target is the label when the
   calibration has labels (``--labels``), else the predicted class. A Softmax/LogSoftmax at the
   output is skipped (relevance starts at its input, the logits). For outputs of rank > 2 the
   class axis is 1 (``[N, K, H, W]`` segmentation maps), or the last axis in graphs with attention
   (``[B, S, V]``), with the predicted class at every position; a rank ≤ 1 output is its own
   relevance.
3. *Backward*: nodes are visited in reverse graph order; each op type has one rule in `RULES`
   mapping the relevance of its outputs to its inputs, and relevance arriving at a tensor from
   several consumers (skip connections) is summed. ``z`` below is the op's pre-activation,
   ``stab(z) = z + ε·sign(z)`` (sign(0) = +1) keeps the division finite, and ε = ``EPS``.

   - **Conv** (any group count, depthwise included; 1-, 2- and 3-D): the *z⁺ rule*
     R_i = Σ_j z⁺_ij / Σ_i' z⁺_i'j · R_j over the positive contributions only
     (z⁺_ij = x_i⁺ w_ij⁺ + x_i⁻ w_ij⁻, which equals x_i w_ij⁺ after a ReLU). It never divides by
     a cancelling sum, so relevance stays positive and stable through deep conv stacks — the
     rule the paper uses for convolutions. ``conv_rule="epsilon"`` selects the ε-rule instead.
     The *first* layer (input = graph input) uses z⁺ too, with the sign split above so
     normalized pixels of either sign are handled (``first_rule="w2"`` gives the input-free w²
     rule). That choice only shapes the relevance map of the input image, which no unit score
     reads, so the criterion skips layers that read only graph inputs altogether.
   - **BatchNormalization** after a Conv/Gemm (its only consumer) is *folded* into that layer
     (W' = γ/σ·W, b' = γ/σ·(b − μ) + β) so z⁺ sees the real effective filter; the BN node then
     passes relevance through. A BN that cannot be folded (after a Concat, pre-activation) is a
     per-channel affine map under the ε-rule R_x = (a·x) / stab(a·x + c) · R_y.
   - **Gemm / MatMul** with a constant weight: ε-rule R_i = x_i Σ_j w_ij R_j / stab(z_j) with
     the bias inside z (the bias absorbs its share, as in Montavon et al. 2019).
   - **Add / Sum / Sub** (residual joins, bias adds): each input gets its share
     ±x_k / stab(Σ ±x) · R; constant inputs absorb theirs; broadcast inputs get the sum over the
     broadcast axes.
   - **GlobalAveragePool / AveragePool / ReduceMean / ReduceSum**: the ε-rule of the averaging
     (each input's share of its window mean).
   - **MaxPool / GlobalMaxPool**: winner-take-all — all relevance of a window goes to its arg-max
     (the first one on ties), since only that input influenced the output.
   - **Relu, LeakyRelu, Clip, Sigmoid, HardSwish and other elementwise activations, Identity,
     Dropout, Cast**: pass-through (the activation is not a redistribution step).
     **Reshape / Flatten / Squeeze / Unsqueeze / Transpose**: the relevance is reshaped/transposed
     like the tensor. **Concat / Split**: routed to the matching slices.
   - **Slice, Gather, Pad, Tile, Expand, Resize/Upsample (nearest), DepthToSpace,
     SpaceToDepth**: pure data movement; relevance is routed back to the source positions. The
     index map is computed by running the node in ORT on a tensor of position numbers, so every
     attribute and input (negative steps, runtime starts, nearest modes) means exactly what ORT
     does.
   - **Mul / Div** by a constant: pass-through. A product of two activations where one is
     broadcast (SE gates, RMSNorm's 1/rms, rotary tables) gives all relevance to the full-size
     signal and none to the gate (the signal-take-all rule of Arras et al. 2017); x·f(x) spelled
     out as a subgraph (Swish, decomposed GELU) gives all to x, like any activation; two
     unrelated full-size factors (SwiGLU) share it half and half (uniform rule, AttnLRP).
   - **LayerNormalization**: ε-rule with σ held constant per sample (Ali et al. 2022), which
     makes it linear. **Attention**: the Softmax probabilities act as constant weights of the
     probabilities·V MatMul (V gets all; no relevance enters the scores), other MatMuls of two
     activations split each contribution half and half.

   Any other op (or a rule that cannot apply to a node) stops the propagation there;
   `calib_ctx.notes` names it. Tensors upstream of it only receive what
   reaches them along other paths.
4. *Unit score*: for every prunable group, Σ|R| over samples and positions of the *output of each
   layer that produces the group's units* (Conv/Gemm/MatMul holding a ROLE_OUT member: conv
   filters, linear rows; after BN folding that is the BN output), mapped to units with
   ``g.unit_of``; groups without such a layer use the input of the consumer layers (ROLE_IN).
   Each group is L1-normalized (÷ its sum) so ``--global`` compares groups. A group none of whose
   tensors receives relevance is scored by `magnitude` and noted.

Without calibration data the model is explained on ``RANDOM_SAMPLES`` seeded random inputs (a
note says so): random inputs show which units the network *can* route decisions through, but
real samples, 5–10 per class as in the paper, are what the criterion is meant for.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..calib import Calibration, CalibContext, random_feeds
from ..dependency import ROLE_IN, ROLE_OUT, DependencyGraph, has_attention
from ..errors import UserError
from ..ir import GraphView, attr
from .score import criterion, magnitude

EPS = 1e-6
BATCH = 16
RANDOM_SAMPLES = 16
LAYER_OPS = ("Conv", "Gemm", "MatMul")
MAX_FLOAT32_INDEX = 1 << 24  # position numbers above this are not exact in float32
# Conv products run in float32 like the activations ORT produced (2x faster BLAS, half the
# memory); the rule's divisions and all relevance sums stay in float64.
CONV_DTYPE = np.float32


@dataclass
class LRPConfig:
    """Rule choices. `eps`: ε of the ε-rules (and the z⁺ denominator guard); `conv_rule`:
    "zplus" or "epsilon" for convolutions; `first_rule`: "zplus", "w2" or "epsilon" for a conv
    reading a graph input; `fold_bn`: fold BatchNorm into the preceding Conv/Gemm/MatMul."""

    eps: float = EPS
    conv_rule: str = "zplus"
    first_rule: str = "zplus"
    fold_bn: bool = True

    def check(self) -> None:
        if self.conv_rule not in CONV_RULES or self.first_rule not in CONV_RULES:
            raise UserError(f"lrp: conv rules are {sorted(CONV_RULES)}; got "
                            f"{self.conv_rule!r}/{self.first_rule!r}")
        if not self.eps > 0:
            raise UserError(f"lrp: eps must be > 0, got {self.eps}")


# --------------------------------------------------------------------------- small helpers
def _f64(a):
    """Floating arrays as float64 (the backward pass divides by small sums); others as they are."""
    if a is None:
        return None
    a = np.asarray(a)
    return a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a


def _stab(z: np.ndarray, eps: float) -> np.ndarray:
    """z + ε·sign(z), sign(0) = +1: the ε-rule denominator, never zero and never sign-flipped."""
    return z + np.where(z >= 0, eps, -eps)


def _unbroadcast(r: np.ndarray, shape) -> np.ndarray:
    """Sum an output-shaped relevance down to an input that was broadcast to the output."""
    shape = tuple(shape)
    extra = r.ndim - len(shape)
    if extra > 0:
        r = r.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (a, b) in enumerate(zip(shape, r.shape)) if a == 1 and b != 1)
    return r.sum(axis=axes, keepdims=True) if axes else r


def _label(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


# --------------------------------------------------------------------------- sliding windows
@dataclass
class _Geo:
    """Where the windows of a Conv/pool lie: strides, dilations, begin pads, end pads used (enough
    to cover every window, ceil_mode included) and the explicit end pads of the node."""

    strides: list
    dil: list
    lo: list
    hi: list
    explicit_hi: list


def _geometry(node, xs, ks, ys) -> _Geo:
    """Window geometry of a node from its attributes and the actual input/output sizes (so
    auto_pad and ceil_mode need no formula of their own)."""
    nd = len(ks)
    st = [int(v) for v in (attr(node, "strides") or [1] * nd)]
    dl = [int(v) for v in (attr(node, "dilations") or [1] * nd)]
    auto = attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        tot = [max((y - 1) * s + (k - 1) * d + 1 - x, 0)
               for x, k, y, s, d in zip(xs, ks, ys, st, dl)]
        lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in tot]
        ehi = [t - lv for t, lv in zip(tot, lo)]
    elif auto == "VALID":
        lo, ehi = [0] * nd, [0] * nd
    else:
        pads = [int(v) for v in (attr(node, "pads") or [0] * (2 * nd))]
        lo, ehi = pads[:nd], pads[nd:]
    hi = [max(e, (y - 1) * s + (k - 1) * d + 1 - x - lv)
          for e, x, k, y, s, d, lv in zip(ehi, xs, ks, ys, st, dl, lo)]
    return _Geo(st, dl, lo, hi, ehi)


def _windows(geo: _Geo, ks, ys):
    """For every kernel offset: (offset, the strided slice of the padded input it reads)."""
    for off in itertools.product(*(range(int(k)) for k in ks)):
        sl = tuple(slice(o * d, o * d + (y - 1) * s + 1, s)
                   for o, d, y, s in zip(off, geo.dil, ys, geo.strides))
        yield off, (slice(None), slice(None)) + sl


def _pad(x: np.ndarray, geo: _Geo, value: float) -> np.ndarray:
    return np.pad(x, [(0, 0), (0, 0)] + list(zip(geo.lo, geo.hi)), constant_values=value)


def _unpad(a: np.ndarray, geo: _Geo, xs) -> np.ndarray:
    return a[(slice(None), slice(None)) + tuple(slice(lv, lv + x) for lv, x in zip(geo.lo, xs))]


def _taps(w: np.ndarray) -> np.ndarray:
    """Conv weights as (*kernel, O, C/g), contiguous per kernel offset: matmul only uses BLAS
    on contiguous operands (a strided W[:, :, i, j] is many times slower)."""
    k = w.ndim - 2
    return np.ascontiguousarray(np.moveaxis(w, (0, 1), (k, k + 1)), dtype=CONV_DTYPE)


def _conv_fwd(x: np.ndarray, w: np.ndarray, groups: int, geo: _Geo, ys) -> np.ndarray:
    """Conv without bias, one kernel offset at a time (memory: one input-sized slice, no im2col).
    `x` may have batch 1 to be broadcast. Products in CONV_DTYPE, result float64."""
    x = x.astype(CONV_DTYPE, copy=False)
    xp = _pad(x, geo, 0.0) if any(geo.lo) or any(geo.hi) else x
    taps = _taps(w)
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    p = int(np.prod(ys, dtype=np.int64))
    out = np.zeros((n, groups, og, p), dtype=CONV_DTYPE)
    for off, sl in _windows(geo, w.shape[2:], ys):
        xs = xp[sl].reshape(n, groups, cg, p)
        wk = taps[off].reshape(groups, og, cg)
        if cg == 1:  # depthwise: elementwise
            out += xs * wk[None]
        elif groups == 1:  # one 2-D BLAS call per sample (a broadcast matmul is much slower)
            for k in range(n):
                out[k, 0] += wk[0] @ xs[k, 0]
        else:
            out += wk @ xs
    return out.reshape((n, o) + tuple(ys)).astype(np.float64)


def _conv_bwd(s: np.ndarray, w: np.ndarray, groups: int, geo: _Geo, x_shape) -> np.ndarray:
    """The transpose of `_conv_fwd` (gradient w.r.t. the input): spreads `s` back over the
    input positions every output read."""
    s = s.astype(CONV_DTYPE, copy=False)
    taps = _taps(w)
    n, o = s.shape[:2]
    ys = s.shape[2:]
    c = x_shape[1]
    cg, og = c // groups, o // groups
    p = int(np.prod(ys, dtype=np.int64))
    s_ = s.reshape(n, groups, og, p)
    gp = np.zeros((n, c) + tuple(x + lv + h for x, lv, h in zip(x_shape[2:], geo.lo, geo.hi)),
                  dtype=CONV_DTYPE)
    for off, sl in _windows(geo, w.shape[2:], ys):
        wk = taps[off].reshape(groups, og, cg)
        view = gp[sl]
        if cg == 1:
            view += (s_ * wk[None]).sum(2, keepdims=True).reshape(view.shape)
        elif groups == 1:
            wt = wk[0].T
            for k in range(n):
                view[k] += (wt @ s_[k, 0]).reshape(view.shape[1:])
        else:
            view += (wk.transpose(0, 2, 1) @ s_).reshape(view.shape)
    return _unpad(gp, geo, x_shape[2:]).astype(np.float64)


# --------------------------------------------------------------------------- conv rules
def _conv_epsilon(x, w, b, groups, geo, r, eps):
    """ε-rule: R_i = x_i Σ_j w_ij R_j / stab(z_j), bias inside z."""
    z = _conv_fwd(x, w, groups, geo, r.shape[2:])
    if b is not None:
        z = z + b.reshape((1, -1) + (1,) * (z.ndim - 2))
    return x * _conv_bwd(r / _stab(z, eps), w, groups, geo, x.shape)


def _conv_zplus(x, w, b, groups, geo, r, eps):
    """z⁺ rule over positive contributions x⁺w⁺ + x⁻w⁻ (bias excluded)."""
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    xp, xn = np.maximum(x, 0), np.minimum(x, 0)
    neg = bool(xn.any())
    z = _conv_fwd(xp, wp, groups, geo, r.shape[2:])
    if neg:
        z += _conv_fwd(xn, wn, groups, geo, r.shape[2:])
    s = r / (z + eps)
    out = xp * _conv_bwd(s, wp, groups, geo, x.shape)
    if neg:
        out += xn * _conv_bwd(s, wn, groups, geo, x.shape)
    return out


def _conv_w2(x, w, b, groups, geo, r, eps):
    """w² rule: R_i = Σ_j w_ij² / Σ_i' w_i'j² · R_j, independent of the input values."""
    w2 = w * w
    ones = np.ones((1,) + x.shape[1:])
    z = _conv_fwd(ones, w2, groups, geo, r.shape[2:])
    return _conv_bwd(r / (z + eps), w2, groups, geo, x.shape)


CONV_RULES = {"zplus": _conv_zplus, "epsilon": _conv_epsilon, "w2": _conv_w2}


# --------------------------------------------------------------------------- one node
class Step:
    """What a rule sees for one node: input/output values (activations of this batch, constants)
    and the relevance of its outputs."""

    def __init__(self, ex: "Explainer", node: onnx.NodeProto, acts: dict, r_out: list):
        self.ex, self.node, self.acts, self.r_out = ex, node, acts, r_out
        self.eps = ex.cfg.eps

    def name(self, i: int) -> str:
        return self.node.input[i] if i < len(self.node.input) else ""

    def is_const(self, i: int) -> bool:
        n = self.name(i)
        return bool(n) and n not in self.acts and (n in self.ex.view.consts or
                                                   n in self.ex.view.folded)

    def raw(self, i: int):
        """Input i as stored (activation of this batch, constant, or folded shape value)."""
        n = self.name(i)
        if not n:
            return None
        if n in self.acts:
            return self.acts[n]
        if n in self.ex.view.consts:
            return self.ex.view.const_value(n)
        return self.ex.view.folded.get(n)

    def inp(self, i: int):
        return _f64(self.raw(i))

    def shape(self, i: int):
        v = self.raw(i)
        return None if v is None else np.shape(v)

    def out(self, i: int = 0):
        return _f64(self.acts.get(self.node.output[i]))

    def r(self, i: int = 0) -> np.ndarray:
        """Relevance of output i (zeros when none reached it)."""
        r = self.r_out[i]
        return r if r is not None else np.zeros(np.shape(self.acts[self.node.output[i]]))

    def none(self) -> list:
        return [None] * len(self.node.input)

    def only(self, i: int, r) -> list:
        """Relevance `r` for input i, nothing for the others (constants, shapes, axes)."""
        out = self.none()
        out[i] = r
        return out

    def fold(self):
        """(scale, shift) of a BatchNorm folded into this layer's output, else None."""
        return self.ex.fold.get(self.node.output[0])

    def reads_graph_input(self) -> bool:
        return self.name(0) in self.ex.view.graph_inputs


RULES: dict[str, Callable[[Step], list | None]] = {}


def rule(*ops: str):
    """Register a backward rule for op types: (Step) -> relevance per input (None = none), or
    None when the rule cannot apply to this node (propagation stops, noted)."""

    def deco(fn):
        for op in ops:
            RULES[op] = fn
        return fn

    return deco


# --------------------------------------------------------------------------- layers
@rule("Conv")
def _conv(st: Step):
    """z⁺ (default) or ε-rule; BN folded into W and b when it follows."""
    x = st.inp(0)
    if x is None or st.is_const(0) or not st.is_const(1) or x.ndim < 3:
        return None
    w = st.inp(1)
    b = st.inp(2) if st.name(2) else None
    f = st.fold()
    if f is not None:
        scale, shift = f
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        b = (b * scale if b is not None else 0.0) + shift
    r = st.r(0)
    geo = _geometry(st.node, x.shape[2:], w.shape[2:], r.shape[2:])
    mode = st.ex.cfg.first_rule if st.reads_graph_input() else st.ex.cfg.conv_rule
    return st.only(0, CONV_RULES[mode](x, w, b, int(attr(st.node, "group", 1)), geo, r, st.eps))


@rule("Gemm")
def _gemm(st: Step):
    """ε-rule with Y = α·A·B + β·C, B constant; BN folded into B and C when it follows."""
    if st.is_const(0):
        return st.none()
    if not st.is_const(1):
        return None
    a, w = st.inp(0), st.inp(1)
    ta, tb = int(attr(st.node, "transA", 0)), int(attr(st.node, "transB", 0))
    a = a.T if ta else a
    w = w.T if tb else w
    alpha, beta = float(attr(st.node, "alpha", 1.0)), float(attr(st.node, "beta", 1.0))
    w = alpha * w
    b = beta * st.inp(2) if st.name(2) else 0.0
    f = st.fold()
    if f is not None:
        w = w * f[0][None, :]
        b = b * f[0] + f[1]
    s = st.r(0) / _stab(a @ w + b, st.eps)
    ra = a * (s @ w.T)
    return st.only(0, ra.T if ta else ra)


ATTENTION_WEIGHTS = ("Softmax",)


def _attention_probs(st: Step, i: int) -> bool:
    """Whether input i is (through pass-through ops) the output of a Softmax."""
    t = st.name(i)
    for _ in range(ACTIVATION_DEPTH):
        p = st.ex.view.producer.get(t)
        if p is None:
            return False
        if p.op_type in ATTENTION_WEIGHTS:
            return True
        if p.op_type not in PASS_THROUGH and p.op_type not in ("Reshape", "Expand"):
            return False
        t = p.input[0]
    return False


def _bilinear(st: Step) -> list | None:
    """MatMul of two activations. Attention probabilities times values: the probabilities act
    as constant weights and the values get everything (the AH-rule of Ali et al. 2022); other
    products (Q·Kᵀ) split each contribution's ε-share half and half (AttnLRP's uniform rule)."""
    a, b = st.inp(0), st.inp(1)
    if a.ndim < 2 or b.ndim < 2:
        return None
    s = st.r(0) / _stab(a @ b, st.eps)
    ra = _unbroadcast(a * (s @ np.swapaxes(b, -1, -2)), a.shape)
    rb = _unbroadcast(b * (np.swapaxes(a, -1, -2) @ s), b.shape)
    pa, pb = _attention_probs(st, 0), _attention_probs(st, 1)
    if pa != pb:
        return [None, rb] if pa else [ra, None]
    return [ra / 2.0, rb / 2.0]


@rule("MatMul")
def _matmul(st: Step):
    """ε-rule for an activation times a constant (either side); see `_bilinear` for two
    activations."""
    ca, cb = st.is_const(0), st.is_const(1)
    if ca and cb:
        return st.none()
    if not (ca or cb):
        return _bilinear(st)
    a, b = st.inp(0), st.inp(1)
    if a.ndim < 2 or b.ndim < 2:
        return None
    shift = 0.0
    f = st.fold()
    if f is not None and cb:
        b = b * f[0]
        shift = f[1]
    s = st.r(0) / _stab(a @ b + shift, st.eps)
    if cb:
        return st.only(0, _unbroadcast(a * (s @ np.swapaxes(b, -1, -2)), a.shape))
    return st.only(1, _unbroadcast(b * (np.swapaxes(a, -1, -2) @ s), b.shape))


def _bn_affine(view: GraphView, node) -> tuple[np.ndarray, np.ndarray] | None:
    """BatchNormalization (inference) as y = scale·x + shift per channel, or None."""
    if len(node.input) < 5 or not all(i in view.consts for i in node.input[1:5]):
        return None
    g, b, mu, var = (np.asarray(view.const_value(i), np.float64).reshape(-1)
                     for i in node.input[1:5])
    scale = g / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
    return scale, b - scale * mu


@rule("BatchNormalization")
def _batchnorm(st: Step):
    """Folded: pass-through (the layer before uses the folded weights). Else the ε-rule of
    the per-channel affine map."""
    if st.node.output[0] in st.ex.folded_bn:
        return st.only(0, st.r(0))
    aff = _bn_affine(st.ex.view, st.node)
    x = st.inp(0)
    if aff is None or x is None or st.is_const(0):
        return None
    shp = (1, -1) + (1,) * (x.ndim - 2)
    ax = x * aff[0].reshape(shp)
    return st.only(0, ax * st.r(0) / _stab(ax + aff[1].reshape(shp), st.eps))


@rule("LayerNormalization")
def _layernorm(st: Step):
    """ε-rule of LayerNorm with σ treated as a constant of the sample (Ali et al. 2022): then
    z_i = γ_i (x_i − mean x)/σ + β_i is linear in x and
    R_j = x_j/σ · (γ_j s_j − mean_i γ_i s_i), s = R / stab(z); β absorbs its share."""
    x = st.inp(0)
    if x is None or st.is_const(0) or not st.is_const(1):
        return None
    axis = int(attr(st.node, "axis", -1)) % x.ndim
    axes = tuple(range(axis, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    sigma = np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True)
                    + float(attr(st.node, "epsilon", 1e-5)))
    gamma = st.inp(1)
    beta = st.inp(2) if st.name(2) else 0.0
    gs = gamma * st.r(0) / _stab(gamma * (x - mu) / sigma + beta, st.eps)
    return st.only(0, x / sigma * (gs - gs.mean(axis=axes, keepdims=True)))


@rule("Softmax")
def _softmax(st: Step):
    """Attention probabilities are treated as constant weights (see `_bilinear`): no relevance
    flows into the scores. At a classifier's output the seed already starts at the logits."""
    return st.none()


# --------------------------------------------------------------------------- joins
def _signed_shares(st: Step, signs) -> list:
    """ε-rule of z = Σ_k sign_k·x_k: input k gets sign_k·x_k / stab(z) · R (unbroadcast);
    constants absorb their share."""
    xs = [st.inp(i) for i in range(len(st.node.input))]
    z = 0.0
    for sg, x in zip(signs, xs):
        if x is not None:
            z = z + sg * x
    s = st.r(0) / _stab(np.asarray(z, dtype=np.float64), st.eps)
    return [None if x is None or st.is_const(i) else _unbroadcast(sg * x * s, np.shape(x))
            for i, (sg, x) in enumerate(zip(signs, xs))]


@rule("Add", "Sum")
def _add(st: Step):
    """Residual joins and bias adds: proportional to each input's contribution."""
    return _signed_shares(st, [1.0] * len(st.node.input))


@rule("Sub")
def _sub(st: Step):
    """a − b: like Add with the subtrahend's contribution negated."""
    return _signed_shares(st, [1.0, -1.0])


ELEMENTWISE = {"Erf", "Pow", "Sqrt", "Exp", "Log", "Reciprocal", "Abs", "Mul", "Add", "Sub",
               "Div"}
ACTIVATION_DEPTH = 8  # how far back an activation-function subgraph (GELU, Swish) may reach


def _elementwise_ancestors(view: GraphView, name: str) -> dict[str, int]:
    """Tensors `name` is computed from through elementwise ops only (distance in ops): the
    pre-activation of an activation function spelled out as a subgraph."""
    dist = {name: 0}
    frontier = [name]
    for d in range(1, ACTIVATION_DEPTH + 1):
        nxt = []
        for t in frontier:
            p = view.producer.get(t)
            if p is None or (p.op_type not in ELEMENTWISE and p.op_type not in PASS_THROUGH):
                continue
            for i in p.input:
                if i and i not in view.consts and i not in dist:
                    dist[i] = d
                    nxt.append(i)
        frontier = nxt
    return dist


def _signal_of(st: Step) -> int | None:
    """Of x·f(x) (Swish, decomposed GELU): the input nearer their common pre-activation, which
    is the signal; f(x) is part of the activation function. None when they are unrelated."""
    da, db = (_elementwise_ancestors(st.ex.view, st.name(i)) for i in range(2))
    common = set(da) & set(db)
    if not common:
        return None
    root = min(common, key=lambda t: da[t] + db[t])
    if da[root] == db[root]:
        return None
    return 0 if da[root] < db[root] else 1


def _gated(st: Step, numerator_only: bool) -> list | None:
    """Mul/Div: a constant factor passes relevance through to the other input. Of two
    activations, a broadcast one is a gate (SE, RMSNorm scale, rotary tables): the full-size
    signal takes all. Two full-size factors: an activation function written out as x·f(x) gives
    all to x; independent factors (SwiGLU) share it half and half (AttnLRP's uniform rule).
    Div only ever propagates to its numerator."""
    live = [i for i in range(2) if not st.is_const(i)]
    if numerator_only and 0 not in live:
        return None if live else st.none()
    if not live:
        return st.none()
    if len(live) == 2:
        yshape = tuple(np.shape(st.acts[st.node.output[0]]))
        full = [i for i in live if tuple(st.shape(i)) == yshape]
        if numerator_only:
            full = [0] if 0 in full else []
        elif len(full) == 2:
            sig = _signal_of(st)
            if sig is None:
                half = st.r(0) / 2.0
                return [half, half]
            full = [sig]
        if len(full) != 1:
            return None
        live = full
    i = live[0]
    return st.only(i, _unbroadcast(st.r(0), st.shape(i)))


@rule("Mul")
def _mul(st: Step):
    return _gated(st, numerator_only=False)


@rule("Div")
def _div(st: Step):
    return _gated(st, numerator_only=True)


# --------------------------------------------------------------------------- pooling
def _reduce_axes(st: Step, ndim: int) -> tuple[int, ...] | None:
    """Axes of a Reduce* node (attribute before opset 18, input after); () = identity."""
    if st.node.op_type.startswith("Global"):
        return tuple(range(2, ndim))
    axes = attr(st.node, "axes")
    if axes is None and st.name(1):
        v = st.raw(1)
        if v is None:
            return None
        axes = np.asarray(v).reshape(-1).tolist()
    if not axes:
        return () if int(attr(st.node, "noop_with_empty_axes", 0)) else tuple(range(ndim))
    return tuple(sorted(int(a) % ndim for a in axes))


def _reduced_relevance(st: Step, axes) -> np.ndarray:
    """Output relevance with the reduced axes back in place (keepdims=0 removed them)."""
    r = st.r(0)
    keep = st.node.op_type.startswith("Global") or int(attr(st.node, "keepdims", 1))
    return r if keep else np.expand_dims(r, axes)


def _reduction(st: Step):
    """(input, reduced axes, result): result is False when the rule has work to do, else what
    the rule returns (no relevance for a constant input, None for unknown axes, the relevance
    unchanged when nothing is reduced)."""
    x = st.inp(0)
    if x is None or st.is_const(0):
        return x, None, st.none()
    axes = _reduce_axes(st, x.ndim)
    if axes is None:
        return x, None, None
    if not axes:
        return x, axes, st.only(0, st.r(0).reshape(x.shape))
    return x, axes, False


@rule("GlobalAveragePool", "ReduceMean", "ReduceSum")
def _mean(st: Step):
    """ε-rule of the average (sum): each input's share x_i / n of the window mean."""
    x, axes, done = _reduction(st)
    if done is not False:
        return done
    n = int(np.prod([x.shape[a] for a in axes])) if st.node.op_type != "ReduceSum" else 1
    z = x.sum(axis=axes, keepdims=True) / n
    return st.only(0, x * _reduced_relevance(st, axes) / _stab(z, st.eps) / n)


@rule("GlobalMaxPool", "ReduceMax")
def _global_max(st: Step):
    """Winner-take-all over the reduced axes (first arg-max)."""
    x, axes, done = _reduction(st)
    if done is not False:
        return done
    rest = [a for a in range(x.ndim) if a not in axes]
    moved = np.transpose(x, rest + list(axes)).reshape([x.shape[a] for a in rest] + [-1])
    win = moved.argmax(-1)
    r = np.transpose(_reduced_relevance(st, axes), rest + list(axes)).reshape(win.shape)
    out = np.zeros(moved.shape)
    np.put_along_axis(out, win[..., None], r[..., None], axis=-1)
    out = out.reshape([x.shape[a] for a in rest] + [x.shape[a] for a in axes])
    return st.only(0, np.transpose(out, np.argsort(rest + list(axes))))


@rule("MaxPool")
def _maxpool(st: Step):
    """Winner-take-all: a window's relevance goes to the input that is its maximum (each output
    position's first winner only, so nothing is counted twice)."""
    x, y = st.inp(0), st.out(0)
    if x is None or st.is_const(0) or y is None:
        return st.none()
    ks = [int(k) for k in attr(st.node, "kernel_shape")]
    geo = _geometry(st.node, x.shape[2:], ks, y.shape[2:])
    xp = _pad(x, geo, -np.inf)
    r = st.r(0)
    gp = np.zeros(xp.shape)
    taken = np.zeros(y.shape, dtype=bool)
    for _, sl in _windows(geo, ks, y.shape[2:]):
        hit = (xp[sl] == y) & ~taken
        gp[sl] += np.where(hit, r, 0.0)
        taken |= hit
    return st.only(0, _unpad(gp, geo, x.shape[2:]))


@rule("AveragePool")
def _avgpool(st: Step):
    """ε-rule of each window's average, with ORT's divisor (count_include_pad or not)."""
    x = st.inp(0)
    if x is None or st.is_const(0):
        return st.none()
    r = st.r(0)
    ys = r.shape[2:]
    ks = [int(k) for k in attr(st.node, "kernel_shape")]
    geo = _geometry(st.node, x.shape[2:], ks, ys)
    inner = np.ones((1, 1) + x.shape[2:])
    if int(attr(st.node, "count_include_pad", 0)):
        inner = np.pad(inner, [(0, 0), (0, 0)] + list(zip(geo.lo, geo.explicit_hi)),
                       constant_values=1.0)
        mask = np.pad(inner, [(0, 0), (0, 0)] + [(0, h - e) for h, e in
                                                zip(geo.hi, geo.explicit_hi)])
    else:
        mask = _pad(inner, geo, 0.0)
    xp = _pad(x, geo, 0.0)
    count = np.zeros((1, 1) + tuple(ys))
    z = np.zeros(r.shape)
    for _, sl in _windows(geo, ks, ys):
        count += mask[sl]
        z += xp[sl]
    count = np.maximum(count, 1.0)
    s = r / _stab(z / count, st.eps) / count
    gp = np.zeros(xp.shape)
    for _, sl in _windows(geo, ks, ys):
        gp[sl] += s
    return st.only(0, x * _unpad(gp, geo, x.shape[2:]))


# --------------------------------------------------------------------------- pass-through
PASS_THROUGH = ("Relu", "LeakyRelu", "PRelu", "Clip", "Elu", "Selu", "Celu", "Gelu",
                "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Softplus", "Softsign", "Mish",
                "ThresholdedRelu", "Identity", "Dropout", "Cast", "Neg")


@rule(*PASS_THROUGH)
def _pass(st: Step):
    """Elementwise activations (and copies) redistribute nothing: R_x = R_y."""
    if st.is_const(0):
        return st.none()
    return st.only(0, st.r(0).reshape(st.shape(0)))


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(st: Step):
    """Same elements, another shape: relevance is reshaped back."""
    if st.is_const(0):
        return st.none()
    return st.only(0, st.r(0).reshape(st.shape(0)))


@rule("Transpose")
def _transpose(st: Step):
    if st.is_const(0):
        return st.none()
    r = st.r(0)
    perm = attr(st.node, "perm") or list(range(r.ndim))[::-1]
    return st.only(0, np.transpose(r, np.argsort(perm)))


@rule("Concat")
def _concat(st: Step):
    """Each input gets the slice of the output relevance it was copied to."""
    r = st.r(0)
    axis = int(attr(st.node, "axis", 0)) % r.ndim
    sizes = [np.shape(st.raw(i))[axis] if st.name(i) else 0 for i in range(len(st.node.input))]
    parts = np.split(r, np.cumsum(sizes)[:-1], axis=axis)
    return [None if st.is_const(i) or not st.name(i) else p for i, p in enumerate(parts)]


@rule("Split")
def _split(st: Step):
    """The input's relevance is the outputs' relevances side by side (zeros where none)."""
    if st.is_const(0):
        return st.none()
    axis = int(attr(st.node, "axis", 0)) % len(st.shape(0))
    parts = [st.r(i) for i in range(len(st.node.output))]
    return st.only(0, np.concatenate(parts, axis=axis))


# --------------------------------------------------------------------------- data movement
ROUTED = ("Slice", "Gather", "Pad", "Tile", "Expand", "Resize", "Upsample", "DepthToSpace",
          "SpaceToDepth")


def _probe_node(node: onnx.NodeProto) -> onnx.NodeProto | None:
    """A copy of a data-movement node reading "x" and writing "y", with any fill value set to
    0 (position numbers start at 1, so 0 means "no source"); None for interpolating modes."""
    mode = attr(node, "mode", b"nearest" if node.op_type in ("Resize", "Upsample") else b"")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if node.op_type in ("Resize", "Upsample") and mode != "nearest":
        return None
    p = onnx.NodeProto()
    p.CopyFrom(node)
    p.input[0] = "x"
    del p.output[:]
    p.output.append("y")
    if node.op_type == "Pad" and len(p.input) > 2:
        p.input[2] = ""
    for a in p.attribute:
        if a.name in ("value", "extrapolation_value") and a.type == onnx.AttributeProto.FLOAT:
            a.f = 0.0
    return p


class _IndexMaps:
    """Source position of every output element of data-movement nodes, computed in ORT on a
    tensor of position numbers and cached per node, input shape and side-input values."""

    def __init__(self, model: onnx.ModelProto):
        self.opsets = list(model.opset_import)
        self.ir_version = model.ir_version
        self.cache: dict = {}

    def get(self, st: Step) -> np.ndarray | None:
        x_shape = tuple(st.shape(0))
        side = []
        for i in range(1, len(st.node.input)):
            v = st.raw(i) if st.name(i) else None
            if st.name(i) and v is None:
                return None
            side.append(None if v is None else np.asarray(v))
        key = (st.node.name or st.node.output[0], x_shape,
               tuple(None if v is None else (v.dtype.str, v.shape, v.tobytes()) for v in side))
        if key not in self.cache:
            self.cache[key] = self._compute(st.node, x_shape, side)
        return self.cache[key]

    def _compute(self, node, x_shape, side) -> np.ndarray | None:
        from ..backends import ort as ortb

        p = _probe_node(node)
        if p is None:
            return None
        n = int(np.prod(x_shape, dtype=np.int64))
        dt, et = ((np.float32, onnx.TensorProto.FLOAT) if n < MAX_FLOAT32_INDEX
                  else (np.float64, onnx.TensorProto.DOUBLE))
        inits = []
        for k, v in enumerate(side, start=1):
            if v is not None and p.input[k]:
                p.input[k] = f"side{k}"
                inits.append(numpy_helper.from_array(v, f"side{k}"))
        g = helper.make_graph([p], "lrp_probe",
                              [helper.make_tensor_value_info("x", et, x_shape)],
                              [helper.make_empty_tensor_value_info("y")], inits)
        m = helper.make_model(g, opset_imports=self.opsets)
        m.ir_version = self.ir_version
        try:
            y = ortb.session(m).run(["y"], {"x": np.arange(1, n + 1, dtype=dt).reshape(x_shape)})[0]
        except Exception:  # noqa: BLE001 - an op ORT cannot run alone: no rule for it
            return None
        return np.rint(y).astype(np.int64) - 1


@rule(*ROUTED)
def _route(st: Step):
    """Relevance of every output element goes back to the element it was copied from (summed
    where one input element was copied several times: Expand, Tile, nearest upsampling)."""
    if st.is_const(0):
        return st.none()
    idx = st.ex.index_maps.get(st)
    if idx is None:
        return None
    r = st.r(0).reshape(-1)
    flat = idx.reshape(-1)
    ok = flat >= 0
    n = int(np.prod(st.shape(0), dtype=np.int64))
    return st.only(0, np.bincount(flat[ok], weights=r[ok], minlength=n).reshape(st.shape(0)))


# --------------------------------------------------------------------------- the engine
def _fold_targets(view: GraphView) -> tuple[dict, set]:
    """BatchNorms that follow a Conv/Gemm/MatMul (their only consumer): {layer output:
    (scale, shift)} and the set of folded BN outputs."""
    fold, folded = {}, set()
    for bn in view.graph.node:
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        x = bn.input[0]
        p = view.producer.get(x)
        aff = _bn_affine(view, bn)
        if (p is None or p.op_type not in LAYER_OPS or aff is None
                or len(view.consumers.get(x, [])) != 1 or x in view.graph_outputs
                or len(p.input) < 2 or p.input[1] not in view.consts
                or p.input[0] in view.consts):
            continue
        if p.op_type != "Conv" and view.rank(x) != 2:  # channel axis 1 must be the last axis
            continue
        fold[x] = aff
        folded.add(bn.output[0])
    return fold, folded


class Explainer:
    """LRP over one ONNX graph: forward in ORT, backward in numpy (see the module docstring)."""

    def __init__(self, view: GraphView, model: onnx.ModelProto | None = None,
                 cfg: LRPConfig | None = None, attention: bool | None = None,
                 input_relevance: bool = True):
        self.view = view
        # False: skip the layers that only read graph inputs (the input's relevance map is an
        # explanation, but no unit score reads it; on a 224² stem it is ~10% of the work)
        self.input_relevance = input_relevance
        self.model = model if model is not None else runnable_model(view)
        self.cfg = cfg or LRPConfig()
        self.cfg.check()
        self.attention = has_attention(view) if attention is None else attention
        self.fold, self.folded_bn = _fold_targets(view) if self.cfg.fold_bn else ({}, set())
        self.index_maps = _IndexMaps(self.model)
        self.stopped: dict[tuple[str, str], list[str]] = {}  # (op, why) -> nodes where R stopped
        self.samples = 0

    # ------------------------------------------------------------------ forward
    def _fetch(self) -> list[str]:
        """Every tensor computed by a main-graph node (constants excluded)."""
        seen, out = set(self.view.graph_inputs), []
        for node in self.view.graph.node:
            for o in node.output:
                if o and o not in seen and o not in self.view.consts:
                    seen.add(o)
                    out.append(o)
        return out

    def batches(self, cal: Calibration, batch: int = BATCH):
        """(activations, labels) per batch: feeds plus every intermediate tensor."""
        from ..backends import ort as ortb
        from ..calib import _symbolic_batch
        from ..evaluate import batches

        names = self._fetch()
        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        have = {o.name for o in probe.graph.output}
        for t in names:
            if t not in have:
                probe.graph.output.append(helper.make_empty_tensor_value_info(t))
        sess = ortb.session(probe)
        symbolic = _symbolic_batch(sess)
        start = 0
        for feeds in batches(sess, cal.feeds):
            n = len(next(iter(feeds.values())))
            for s in range(0, n, batch) if symbolic else [0]:
                sub = {k: v[s:s + batch] for k, v in feeds.items()} if symbolic else feeds
                m = len(next(iter(sub.values())))
                acts = dict(sub)
                acts.update(zip(names, sess.run(names, sub)))
                labels = None if cal.labels is None else cal.labels[start + s:start + s + m]
                yield acts, labels
            start += n

    # ------------------------------------------------------------------ backward
    def seed(self, acts: dict, labels) -> dict[str, np.ndarray]:
        """Initial relevance: the target-class logit of the first float output (see module doc)."""
        out = next((o for o in self.view.graph_outputs if o in acts
                    and np.issubdtype(np.asarray(acts[o]).dtype, np.floating)), None)
        if out is None:
            return {}
        p = self.view.producer.get(out)
        if p is not None and p.op_type in ("Softmax", "LogSoftmax") and p.input[0] in acts:
            out = p.input[0]
        y = _f64(acts[out])
        if y.ndim <= 1:
            return {out: y.copy()}
        axis = 1 if y.ndim == 2 or not self.attention else y.ndim - 1
        if labels is not None and y.ndim == 2:
            t = np.asarray(labels, dtype=np.int64)
            if t.min() < 0 or t.max() >= y.shape[1]:
                raise UserError(f"--labels: class ids must be in [0, {y.shape[1]}) for output "
                                f"'{out}', got {int(t.min())}..{int(t.max())}")
        else:
            t = y.argmax(axis)
        shape = [1] * y.ndim
        shape[axis] = y.shape[axis]
        hit = np.arange(y.shape[axis]).reshape(shape) == np.expand_dims(t, axis)
        return {out: np.where(hit, y, 0.0)}

    def backward(self, acts: dict, seed: dict, sink: Callable[[str, np.ndarray], None]) -> None:
        """Propagate `seed` to every tensor it reaches; `sink(name, R)` sees each tensor's final
        relevance once (when all its consumers are done), after which it is dropped."""
        rel = dict(seed)
        for node in reversed(self.view.graph.node):
            r_out = [rel.pop(o, None) if o else None for o in node.output]
            if all(r is None for r in r_out):
                continue
            for o, r in zip(node.output, r_out):
                if r is not None:
                    sink(o, r)
            if not self.input_relevance and self._reads_only_inputs(node):
                continue
            r_in, why = self._apply(node, acts, r_out)
            if r_in is None:
                self.stopped.setdefault((_label(node), why), []).append(
                    node.name or node.output[0])
                continue
            for name, r in zip(node.input, r_in):
                if r is None or not name or name in self.view.consts:
                    continue
                rel[name] = rel[name] + r if name in rel else r
            for o in node.output:  # every reader of these is done: free the activation
                acts.pop(o, None)
        for name, r in rel.items():
            sink(name, r)

    def _reads_only_inputs(self, node) -> bool:
        live = [i for i in node.input if i and i not in self.view.consts]
        return bool(live) and all(i in self.view.graph_inputs for i in live)

    def _apply(self, node, acts, r_out) -> tuple[list | None, str]:
        """(relevance per input, "") or (None, why propagation stops at this node)."""
        fn = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if fn is None:
            return None, "has no relevance rule"
        try:
            r_in = fn(Step(self, node, acts, r_out))
        except (ValueError, IndexError, TypeError) as e:  # shapes a rule does not handle
            return None, f"rule failed ({type(e).__name__}: {str(e)[:120]})"
        return r_in, "" if r_in is not None else "rule does not apply"

    def run(self, cal: Calibration, sink, batch: int = BATCH) -> None:
        for acts, labels in self.batches(cal, batch):
            seed = self.seed(acts, labels)
            self.samples += len(next(iter(acts.values())))
            if seed:
                self.backward(acts, seed, sink)

    def notes(self) -> list[str]:
        out = []
        for (op, why), names in sorted(self.stopped.items()):
            uniq = list(dict.fromkeys(names))
            out.append(f"lrp: {op} {why} at {len(uniq)} node(s) (e.g. '{uniq[0]}'); relevance "
                       "stops there")
        return out


def runnable_model(view: GraphView) -> onnx.ModelProto:
    """The model ORT can run from memory: weights kept on disk (external data) are read in."""
    model = view.model
    ext = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not ext:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            t.CopyFrom(numpy_helper.from_array(np.asarray(view.const_value(t.name)), t.name))
    if m.ByteSize() > (1 << 31) - 1:
        raise UserError("lrp runs the model in ONNX Runtime from memory, which is not possible "
                        "for models over 2 GB")
    return m


def relevance_sums(model: onnx.ModelProto, feeds: dict, labels=None, batch: int = BATCH,
                   **cfg) -> dict[str, float]:
    """Σ of the relevance of every tensor that receives some, over all samples and positions.

    With ε-rules, zero biases and no unknown ops this is (nearly) the same number for every
    tensor on a path from the output to the input: the conservation property the tests check.
    """
    from ..fold import static_view
    from ..model_io import infer_shapes

    view = static_view(model, infer_shapes(model))
    ex = Explainer(view, model, LRPConfig(**cfg))
    sums: dict[str, float] = {}

    def sink(name, r):
        sums[name] = sums.get(name, 0.0) + float(np.sum(r))

    ex.run(Calibration({k: np.asarray(v) for k, v in feeds.items()},
                       None if labels is None else np.asarray(labels)), sink, batch)
    return sums


# --------------------------------------------------------------------------- the criterion
def score_targets(dg: DependencyGraph) -> dict[int, list[tuple[str, int]]]:
    """Per prunable group, the activation axes whose relevance scores its units: the outputs of
    the layers that produce the units (ROLE_OUT weights), else the inputs of the layers that
    consume them (ROLE_IN weights)."""
    view = dg.view
    out = {}
    for g in dg.prunable_groups():
        outs = {m.tensor for m in g.members if m.role == ROLE_OUT}
        ins = {m.tensor for m in g.members if m.role == ROLE_IN}
        acts = [dn for dn in g.unit_of if dn[0] not in view.consts]
        produced = [(t, a) for t, a in acts
                    if (p := view.producer.get(t)) is not None and p.op_type in LAYER_OPS
                    and outs.intersection(p.input)]
        consumed = [(t, a) for t, a in acts
                    if any(n.op_type in LAYER_OPS and n.input[0] == t
                           and ins.intersection(n.input[1:]) for n in view.consumers.get(t, []))]
        out[g.id] = produced or consumed
    return out


class _ChannelSums:
    """Σ|R| per position of the wanted axes, over samples and every other axis."""

    def __init__(self, targets: dict[int, list[tuple[str, int]]]):
        self.axes: dict[str, set[int]] = {}
        for dns in targets.values():
            for t, a in dns:
                self.axes.setdefault(t, set()).add(a)
        self.sums: dict[tuple[str, int], np.ndarray] = {}

    def __call__(self, name: str, r: np.ndarray) -> None:
        for a in self.axes.get(name, ()):
            if a >= r.ndim:
                continue
            other = tuple(k for k in range(r.ndim) if k != a)
            v = np.abs(r).sum(axis=other)
            key = (name, a)
            self.sums[key] = self.sums[key] + v if key in self.sums else v


def unit_scores(dg: DependencyGraph, targets, sums: dict, ctx: CalibContext) -> dict:
    """L1-normalized Σ|R| per unit; magnitude (noted) for groups that got no relevance."""
    fallback = None
    out = {}
    for g in dg.prunable_groups():
        s = np.zeros(g.n_units)
        for dn in targets.get(g.id, []):
            v = sums.get(dn)
            if v is not None and len(v) == len(g.unit_of[dn]):
                np.add.at(s, g.unit_of[dn], v)
        total = float(s.sum())
        if total > 0 and np.isfinite(total):
            out[g.id] = s / total
            continue
        if fallback is None:
            fallback = magnitude(dg)
        m = fallback[g.id]
        out[g.id] = m / m.sum() if m.sum() > 0 else m
        ctx.notes.append(f"lrp: group {g.id} ({g.label()}) receives no relevance; scored by "
                         "magnitude")
    return out


@criterion("lrp")
def lrp(dg: DependencyGraph, calib_ctx: CalibContext | None = None, seed: int = 0,
        batch: int = BATCH, samples: int = RANDOM_SAMPLES, eps: float = EPS,
        conv_rule: str = "zplus", first_rule: str = "zplus", fold_bn: bool = True,
        **_) -> dict[int, np.ndarray]:
    """Σ|relevance| of each unit's activations over the calibration samples (see module doc).

    The samples are `calib_ctx.calibration` (set by the pipeline from --calib/--calib-random),
    else `samples` seeded random inputs."""
    ctx = calib_ctx if calib_ctx is not None else CalibContext()
    cfg = LRPConfig(eps=eps, conv_rule=conv_rule, first_rule=first_rule, fold_bn=fold_bn)
    ex = Explainer(dg.view, cfg=cfg, attention=dg.has_attention, input_relevance=False)
    cal = ctx.calibration
    if cal is None:
        cal = Calibration(random_feeds(ex.model, samples, seed), source=f"random:{samples}")
        ctx.notes.append(f"lrp: no calibration data; relevance measured on {cal.n} seeded random "
                         "inputs (give --calib with a few real samples per class)")
        if ctx.source in ("", "none"):
            ctx.source, ctx.samples = f"{cal.source} (lrp)", cal.n
    targets = score_targets(dg)
    sums = _ChannelSums(targets)
    ex.run(cal, sums, batch)
    ctx.notes.extend(ex.notes())
    return unit_scores(dg, targets, sums.sums, ctx)

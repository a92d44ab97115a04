"""Numeric kernels of LRP: stabilized divisions and convolutions as sliding windows.

Relevance runs in float64; conv products run in float32 like the activations ONNX Runtime
produced (2x faster BLAS, half the memory), with the rule's divisions and all relevance sums in
float64. Convolutions are computed one kernel offset at a time (memory: one input-sized slice,
no im2col), forward (`conv_fwd`) and transposed (`conv_bwd`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx

from ...ir import attr

EPS = 1e-6
MAX_FLOAT32_INDEX = 1 << 24  # position numbers above this are not exact in float32
CONV_DTYPE = np.float32


def f64(a):
    """Floating arrays as float64 (the backward pass divides by small sums); others as they are."""
    if a is None:
        return None
    a = np.asarray(a)
    return a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a


def stab(z: np.ndarray, eps: float) -> np.ndarray:
    """z + ε·sign(z), sign(0) = +1: the ε-rule denominator, never zero and never sign-flipped."""
    return z + np.where(z >= 0, eps, -eps)


def unbroadcast(r: np.ndarray, shape) -> np.ndarray:
    """Sum an output-shaped relevance down to an input that was broadcast to the output."""
    shape = tuple(shape)
    extra = r.ndim - len(shape)
    if extra > 0:
        r = r.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (a, b) in enumerate(zip(shape, r.shape)) if a == 1 and b != 1)
    return r.sum(axis=axes, keepdims=True) if axes else r


def label_of(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


# --------------------------------------------------------------------------- sliding windows
@dataclass
class Geo:
    """Where the windows of a Conv/pool lie: strides, dilations, begin pads, end pads used (enough
    to cover every window, ceil_mode included) and the explicit end pads of the node."""

    strides: list
    dil: list
    lo: list
    hi: list
    explicit_hi: list


def geometry(node, xs, ks, ys) -> Geo:
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
    return Geo(st, dl, lo, hi, ehi)


def windows(geo: Geo, ks, ys):
    """For every kernel offset: (offset, the strided slice of the padded input it reads)."""
    for off in itertools.product(*(range(int(k)) for k in ks)):
        sl = tuple(slice(o * d, o * d + (y - 1) * s + 1, s)
                   for o, d, y, s in zip(off, geo.dil, ys, geo.strides))
        yield off, (slice(None), slice(None)) + sl


def pad(x: np.ndarray, geo: Geo, value: float) -> np.ndarray:
    return np.pad(x, [(0, 0), (0, 0)] + list(zip(geo.lo, geo.hi)), constant_values=value)


def unpad(a: np.ndarray, geo: Geo, xs) -> np.ndarray:
    return a[(slice(None), slice(None)) + tuple(slice(lv, lv + x) for lv, x in zip(geo.lo, xs))]


def _taps(w: np.ndarray) -> np.ndarray:
    """Conv weights as (*kernel, O, C/g), contiguous per kernel offset: matmul only uses BLAS
    on contiguous operands (a strided W[:, :, i, j] is many times slower)."""
    k = w.ndim - 2
    return np.ascontiguousarray(np.moveaxis(w, (0, 1), (k, k + 1)), dtype=CONV_DTYPE)


def conv_fwd(x: np.ndarray, w: np.ndarray, groups: int, geo: Geo, ys) -> np.ndarray:
    """Conv without bias, one kernel offset at a time (memory: one input-sized slice, no im2col).
    `x` may have batch 1 to be broadcast. Products in CONV_DTYPE, result float64."""
    x = x.astype(CONV_DTYPE, copy=False)
    xp = pad(x, geo, 0.0) if any(geo.lo) or any(geo.hi) else x
    taps = _taps(w)
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    p = int(np.prod(ys, dtype=np.int64))
    out = np.zeros((n, groups, og, p), dtype=CONV_DTYPE)
    for off, sl in windows(geo, w.shape[2:], ys):
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


def conv_bwd(s: np.ndarray, w: np.ndarray, groups: int, geo: Geo, x_shape) -> np.ndarray:
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
    for off, sl in windows(geo, w.shape[2:], ys):
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
    return unpad(gp, geo, x_shape[2:]).astype(np.float64)


# --------------------------------------------------------------------------- conv rules
def _conv_epsilon(x, w, b, groups, geo, r, eps):
    """ε-rule: R_i = x_i Σ_j w_ij R_j / stab(z_j), bias inside z."""
    z = conv_fwd(x, w, groups, geo, r.shape[2:])
    if b is not None:
        z = z + b.reshape((1, -1) + (1,) * (z.ndim - 2))
    return x * conv_bwd(r / stab(z, eps), w, groups, geo, x.shape)


def _conv_zplus(x, w, b, groups, geo, r, eps):
    """z⁺ rule over positive contributions x⁺w⁺ + x⁻w⁻ (bias excluded)."""
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    xp, xn = np.maximum(x, 0), np.minimum(x, 0)
    neg = bool(xn.any())
    z = conv_fwd(xp, wp, groups, geo, r.shape[2:])
    if neg:
        z += conv_fwd(xn, wn, groups, geo, r.shape[2:])
    s = r / (z + eps)
    out = xp * conv_bwd(s, wp, groups, geo, x.shape)
    if neg:
        out += xn * conv_bwd(s, wn, groups, geo, x.shape)
    return out


def _conv_w2(x, w, b, groups, geo, r, eps):
    """w² rule: R_i = Σ_j w_ij² / Σ_i' w_i'j² · R_j, independent of the input values."""
    w2 = w * w
    ones = np.ones((1,) + x.shape[1:])
    z = conv_fwd(ones, w2, groups, geo, r.shape[2:])
    return conv_bwd(r / (z + eps), w2, groups, geo, x.shape)


CONV_RULES = {"zplus": _conv_zplus, "epsilon": _conv_epsilon, "w2": _conv_w2}

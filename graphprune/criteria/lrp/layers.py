"""LRP rules of weighted layers and normalizations: Conv (z⁺ / ε / w²), Gemm, MatMul
(attention included), BatchNormalization, LayerNormalization, Softmax."""
from __future__ import annotations

import numpy as np

from ...ir import GraphView, attr
from .kernels import CONV_RULES, geometry, stab, unbroadcast
from .step import ACTIVATION_DEPTH, PASS_THROUGH, Step, rule

LAYER_OPS = ("Conv", "Gemm", "MatMul")  # layers whose constant weight makes units

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
    geo = geometry(st.node, x.shape[2:], w.shape[2:], r.shape[2:])
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
    s = st.r(0) / stab(a @ w + b, st.eps)
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
    s = st.r(0) / stab(a @ b, st.eps)
    ra = unbroadcast(a * (s @ np.swapaxes(b, -1, -2)), a.shape)
    rb = unbroadcast(b * (np.swapaxes(a, -1, -2) @ s), b.shape)
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
    s = st.r(0) / stab(a @ b + shift, st.eps)
    if cb:
        return st.only(0, unbroadcast(a * (s @ np.swapaxes(b, -1, -2)), a.shape))
    return st.only(1, unbroadcast(b * (np.swapaxes(a, -1, -2) @ s), b.shape))


def bn_affine(view: GraphView, node) -> tuple[np.ndarray, np.ndarray] | None:
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
    aff = bn_affine(st.ex.view, st.node)
    x = st.inp(0)
    if aff is None or x is None or st.is_const(0):
        return None
    shp = (1, -1) + (1,) * (x.ndim - 2)
    ax = x * aff[0].reshape(shp)
    return st.only(0, ax * st.r(0) / stab(ax + aff[1].reshape(shp), st.eps))


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
    gs = gamma * st.r(0) / stab(gamma * (x - mu) / sigma + beta, st.eps)
    return st.only(0, x / sigma * (gs - gs.mean(axis=axes, keepdims=True)))


@rule("Softmax")
def _softmax(st: Step):
    """Attention probabilities are treated as constant weights (see `_bilinear`): no relevance
    flows into the scores. At a classifier's output the seed already starts at the logits."""
    return st.none()

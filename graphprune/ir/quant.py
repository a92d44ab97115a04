"""Block-quantized weights as logical constants: ONNX Runtime's MatMulNBits and
GatherBlockQuantized (com.microsoft).

A quantized weight is stored as codes, scales and optional zero points: row n of the logical
matrix W [N, K] is split into blocks of `block` positions along K, each with one scale and
one zero point, and ``W[n, k] = (code - zero_point) · scale``. MatMulNBits computes
``Y = A @ Wᵀ`` from ``B [N, k_blocks, block·bits/8]`` (uint8, low bits first), ``scales
[N, k_blocks]`` and ``zero_points`` (packed uint8 ``[N, ceil(k_blocks·bits/8)]``, or unpacked
in A's float type; default 2^(bits-1)); GatherBlockQuantized gathers rows of the same layout
``data [N, K·bits/8]`` (an int4 embedding, often the very bytes of the tied LM head seen
through a Reshape). Either rank-1 (flattened, row-major) scales and zero points are accepted.

The view (`graphprune.ir.graph.GraphView`) presents each such weight as one constant
``<B>::dequantized`` of shape [N, K]: parameters count its elements, criteria read its
dequantized values, and a rewrite that slices or changes it writes codes, scales and zero
points back here: rows (N) and whole blocks of K are sliced byte for byte; any other change of
K positions, or of values, is re-quantized with the same bits and block size (symmetric like
ONNX Runtime's quantizer when the model has no zero points: scale = the block's value of
largest magnitude / −2^(bits-1); asymmetric otherwise: scale = (max − min) / (2^bits − 1)).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

SUFFIX = "::dequantized"


@dataclass
class QuantWeight:
    """Where the parts of one logical quantized weight [n, k] are stored."""

    name: str  # the logical constant's name
    codes: str  # B (rank 3) or GatherBlockQuantized data (rank 2)
    scales: str
    zero_points: str  # "" when the model relies on the default zero point
    n: int
    k: int
    bits: int
    block: int
    zp_packed: bool = True  # uint8 zero points packed like the codes; else floats
    views: list = field(default_factory=list)  # (Reshape node, shape input) that reshape codes
    nodes: list = field(default_factory=list)  # the MatMulNBits / GatherBlockQuantized nodes

    @property
    def blocks(self) -> int:
        return -(-self.k // self.block)

    @property
    def storage(self) -> list[str]:
        return [t for t in (self.codes, self.scales, self.zero_points) if t]


# ----------------------------------------------------------------------------- bit packing
def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Rows of packed codes (low bits first) -> [rows, count] uint8 codes."""
    rows = packed.reshape(packed.shape[0], -1).astype(np.uint8)
    if bits == 8:
        return rows[:, :count].copy()
    per = 8 // bits
    mask = (1 << bits) - 1
    out = np.empty((rows.shape[0], rows.shape[1] * per), dtype=np.uint8)
    for j in range(per):
        out[:, j::per] = (rows >> (bits * j)) & mask
    return out[:, :count]


def pack(codes: np.ndarray, bits: int, width: int) -> np.ndarray:
    """[rows, count] codes -> [rows, width] packed bytes (zero-padded at the end)."""
    if bits == 8:
        out = np.zeros((codes.shape[0], width), dtype=np.uint8)
        out[:, :codes.shape[1]] = codes
        return out
    per = 8 // bits
    full = np.zeros((codes.shape[0], width * per), dtype=np.uint8)
    full[:, :codes.shape[1]] = codes
    out = np.zeros((codes.shape[0], width), dtype=np.uint8)
    for j in range(per):
        out |= (full[:, j::per] << (bits * j)).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- values
@dataclass
class Parts:
    """A weight's parts as arrays: codes [N, K_padded], scales [N, blocks], zero points
    [N, blocks] (as numbers), and the shapes/dtypes they are stored with."""

    codes: np.ndarray
    scales: np.ndarray
    zp: np.ndarray
    k: int
    qw: QuantWeight
    shapes: dict
    dtypes: dict


def read_parts(qw: QuantWeight, value) -> Parts:
    """`value(name)` reads a stored constant."""
    b, s = np.asarray(value(qw.codes)), np.asarray(value(qw.scales))
    nb = qw.blocks
    codes = unpack(b, qw.bits, nb * qw.block)
    scales = s.reshape(qw.n, nb)
    if qw.zero_points:
        z = np.asarray(value(qw.zero_points))
        zp = (unpack(z, qw.bits, nb) if qw.zp_packed else z.reshape(qw.n, nb)).astype(np.float64)
        zd, zs = z.dtype, z.shape
    else:
        zp = np.full((qw.n, nb), float(1 << (qw.bits - 1)))
        zd, zs = None, None
    return Parts(codes, scales, zp, qw.k, qw, {"codes": b.shape, "scales": s.shape, "zp": zs},
                 {"codes": b.dtype, "scales": s.dtype, "zp": zd})


def dequantize(p: Parts) -> np.ndarray:
    """The logical weight [N, K] (float32)."""
    bs = p.qw.block
    q = p.codes.astype(np.float64).reshape(p.codes.shape[0], -1, bs)
    w = (q - p.zp[..., None]) * p.scales.astype(np.float64)[..., None]
    return w.reshape(p.codes.shape[0], -1)[:, :p.k].astype(np.float32)


def quantize(w: np.ndarray, qw: QuantWeight, dtypes: dict, like: Parts | None = None) -> Parts:
    """Quantize a logical weight [N, K'] with qw's bits and block size: symmetric when the
    model has no zero points, else asymmetric (see the module docstring). With `like` (same
    shape), its scales and zero points are reused (values already on that grid come back as
    the same codes: how zeroed positions are written exactly)."""
    n, k = w.shape
    bs, hi = qw.block, (1 << qw.bits) - 1
    nb = -(-k // bs)
    x = np.zeros((n, nb * bs), dtype=np.float64)
    x[:, :k] = w
    x = x.reshape(n, nb, bs)
    if like is not None:
        scales, zp = like.scales.astype(np.float64), like.zp
    elif not qw.zero_points:
        idx = np.abs(x).argmax(axis=2)
        peak = np.take_along_axis(x, idx[..., None], axis=2)[..., 0]
        scales = peak / -float(1 << (qw.bits - 1))
        zp = np.full((n, nb), float(1 << (qw.bits - 1)))
    else:
        lo, up = np.minimum(x.min(axis=2), 0.0), np.maximum(x.max(axis=2), 0.0)
        scales = (up - lo) / hi
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.clip(np.round(np.where(scales != 0, -lo / scales, 0.0)), 0, hi)
    scales = scales.astype(dtypes["scales"]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scales[..., None] != 0, np.round(x / scales[..., None]), 0.0)
    codes = np.clip(q + zp[..., None], 0, hi).astype(np.uint8).reshape(n, nb * bs)
    return Parts(codes, scales.astype(dtypes["scales"]), zp, k, qw, {}, dtypes)


def take(p: Parts, axis: int, pos: np.ndarray) -> Parts:
    """Keep rows (axis 0: exact) or K positions (axis 1: exact for whole blocks, else the
    kept values are re-quantized)."""
    pos = np.asarray(pos, dtype=np.int64)
    if axis == 0:
        return Parts(p.codes[pos], p.scales[pos], p.zp[pos], p.k, p.qw, {}, p.dtypes)
    bs = p.qw.block
    blocks = np.unique(pos // bs)
    whole = np.concatenate([np.arange(b * bs, min((b + 1) * bs, p.k)) for b in blocks])
    if len(whole) == len(pos) and np.array_equal(whole, pos):  # only the last block is short
        cols = np.concatenate([np.arange(b * bs, (b + 1) * bs) for b in blocks])
        return Parts(p.codes[:, cols], p.scales[:, blocks], p.zp[:, blocks], len(pos), p.qw, {},
                     p.dtypes)
    return requantize(p, pos)


def requantize(p: Parts, pos: np.ndarray) -> Parts:
    """The weight's K positions `pos` in new blocks of the same size, each quantized on the
    grid that loses least: the (scale, zero point) of one of the old blocks its values come
    from (on which they are exact, if they all come from that block) or a fresh one. An old
    grid is used only when it keeps every value as close as a fresh quantization would (one
    step symmetric, half a step asymmetric): no value is clipped."""
    w = dequantize(p)[:, pos].astype(np.float64)
    best = quantize(w, p.qw, p.dtypes)
    n, k = w.shape
    bs, hi = p.qw.block, (1 << p.qw.bits) - 1
    nb = -(-k // bs)
    x = np.zeros((n, nb * bs))
    x[:, :k] = w
    x = x.reshape(n, nb, bs)
    old = np.full(nb * bs, -1, dtype=np.int64)
    old[:k] = pos // bs
    old = old.reshape(nb, bs)
    limit = 0.5 if p.qw.zero_points else 1.0
    err, _ = _block_error(x, best.scales.astype(np.float64), best.zp, hi)
    scales, zp = best.scales.astype(np.float64).copy(), best.zp.copy()
    for j in range(bs):  # candidate: the old block of the j-th value of every new block
        src = np.where(old[:, j] >= 0, old[:, j], old[:, 0])
        s_c, z_c = p.scales[:, src].astype(np.float64), p.zp[:, src]
        e, worst = _block_error(x, s_c, z_c, hi)
        better = (e < err) & (worst <= limit * np.abs(s_c) * (1 + 1e-6))
        scales[better], zp[better], err[better] = s_c[better], z_c[better], e[better]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scales[..., None] != 0, np.round(x / scales[..., None]), 0.0)
    codes = np.clip(q + zp[..., None], 0, hi).astype(np.uint8).reshape(n, nb * bs)
    return Parts(codes, scales.astype(p.dtypes["scales"]), zp, k, p.qw, {}, p.dtypes)


def _block_error(x: np.ndarray, scales: np.ndarray, zp: np.ndarray, hi: int):
    """Squared and largest error of quantizing blocks x [n, blocks, block] with one (scale,
    zero point) each."""
    s = scales[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s != 0, np.round(x / s), 0.0)
    d = np.abs((np.clip(q + zp[..., None], 0, hi) - zp[..., None]) * s - x)
    return (d ** 2).sum(axis=2), d.max(axis=2)


def zeroed(p: Parts, axis: int, pos: np.ndarray) -> Parts:
    """The same weight with rows (axis 0) or K positions (axis 1) set to exactly zero: their
    codes become their block's zero point (scales and zero points unchanged)."""
    codes = p.codes.copy()
    zp = np.repeat(p.zp, p.qw.block, axis=1).astype(np.uint8)
    pos = np.asarray(pos, dtype=np.int64)
    if axis == 0:
        codes[pos] = zp[pos]
    else:
        codes[:, pos] = zp[:, pos]
    return Parts(codes, p.scales, p.zp, p.k, p.qw, p.shapes, p.dtypes)


def stored(p: Parts, rank: dict) -> dict[str, np.ndarray]:
    """The arrays to store for `p`, shaped like the originals (`rank`: part -> original rank;
    codes of rank 3 are [N, blocks, block·bits/8], of rank 2 [N, K'·bits/8])."""
    qw, n = p.qw, p.codes.shape[0]
    nb = p.codes.shape[1] // qw.block
    blob = qw.block * qw.bits // 8
    codes = pack(p.codes, qw.bits, nb * blob)
    if rank["codes"] == 3:
        codes = codes.reshape(n, nb, blob)
    else:
        codes = pack(p.codes[:, :p.k], qw.bits, -(-p.k * qw.bits // 8))
    out = {qw.codes: codes,
           qw.scales: p.scales.astype(p.dtypes["scales"]).reshape(
               (n, nb) if rank["scales"] == 2 else (n * nb,))}
    if qw.zero_points:
        if qw.zp_packed:
            z = pack(p.zp.astype(np.uint8), qw.bits, -(-nb * qw.bits // 8))
        else:
            z = p.zp.astype(p.dtypes["zp"])
        out[qw.zero_points] = z if rank["zp"] == 2 else z.reshape(-1)
    return out


# ----------------------------------------------------------------------------- recognition
MS = "com.microsoft"


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def find(view) -> tuple[dict[str, QuantWeight], dict[str, str]]:
    """The quantized weights of a view's graph: logical name -> QuantWeight, and the output
    name of every MatMulNBits / GatherBlockQuantized node that reads one -> its logical name.
    A weight is recognized only when every reader of its codes, scales and zero points is one
    of those nodes (or a Reshape of the codes that only such nodes read)."""
    found: dict[str, QuantWeight] = {}
    by_node: dict[str, str] = {}
    bad: set[str] = set()
    for node in view.graph.node:
        if node.domain != MS or node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
            continue
        qw = _describe(view, node)
        if qw is None or qw.name in bad:
            continue
        old = found.get(qw.name)
        if old is None:
            found[qw.name] = qw
        elif (old.scales, old.zero_points, old.n, old.k, old.bits, old.block) != (
                qw.scales, qw.zero_points, qw.n, qw.k, qw.bits, qw.block):
            bad.add(qw.name)  # the same codes read two ways: not understood
            del found[qw.name]
        else:
            old.nodes.append(node)
            old.views += [v for v in qw.views if v not in old.views]
    out = {}
    for name, qw in found.items():
        if not _only_readers(view, qw):
            continue
        out[name] = qw
        for node in qw.nodes:
            by_node[node.output[0]] = name
    return out, by_node


def _const(view, name):
    return name and name in view.consts and view.consts[name].kind in ("initializer",
                                                                        "constant_node")


def _describe(view, node) -> QuantWeight | None:
    ins = list(node.input) + [""] * 6
    bits = int(_attr(node, "bits", 4))
    if bits not in (2, 4, 8):
        return None
    if node.op_type == "MatMulNBits":
        b, s, z = ins[1], ins[2], ins[3]
        if ins[4] or not (_const(view, b) and _const(view, s)) or (z and not _const(view, z)):
            return None
        n, k, bs = int(_attr(node, "N", 0)), int(_attr(node, "K", 0)), int(_attr(node, "block_size", 0))
        if not (n and k and bs) or int(_attr(node, "weight_prepacked", 0)):
            return None
        nb = -(-k // bs)
        if tuple(view.consts[b].shape) != (n, nb, bs * bits // 8):
            return None
        views = []
    else:
        data, s, z = ins[0], ins[2], ins[3]
        if int(_attr(node, "gather_axis", 0)) != 0 or int(_attr(node, "quantize_axis", 1)) != 1:
            return None
        bs = int(_attr(node, "block_size", 128))
        views = []
        b = data
        if not _const(view, data):
            prod = view.producer.get(data)
            if prod is None or prod.op_type != "Reshape" or not _const(view, prod.input[0]) \
                    or not _const(view, prod.input[1]) or len(view.consumers.get(data, [])) != 1:
                return None
            b = prod.input[0]
            views = [(prod, prod.input[1])]
        if not _const(view, s) or (z and not _const(view, z)):
            return None
        shape = view.consts[b].shape
        if len(shape) not in (2, 3) or view.consts[b].dtype != np.uint8:
            return None
        n = int(shape[0])
        k = int(np.prod(shape[1:], dtype=np.int64)) * 8 // bits
        nb = -(-k // bs)
        if views and len(shape) == 3 and shape[1] != nb:
            return None
    if view.consts[s].numel != n * nb:
        return None
    packed = True
    if z:
        zc = view.consts[z]
        packed = zc.dtype == np.uint8
        want = n * -(-nb * bits // 8) if packed else n * nb
        if zc.numel != want:
            return None
    return QuantWeight(b + SUFFIX, b, s, z, n, k, bits, bs, packed, views, [node])


def _only_readers(view, qw: QuantWeight) -> bool:
    allowed = {id(n) for n in qw.nodes} | {id(r) for r, _ in qw.views}
    for t in qw.storage:
        if t in view.graph_outputs or any(id(r) not in allowed
                                           for r in view.consumers.get(t, [])):
            return False
    return True

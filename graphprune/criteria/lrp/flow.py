"""LRP rules of joins, pooling, activations and data movement: Add/Sub/Mul/Div, reductions
and pools, pass-through activations, reshapes, Concat/Split, and routed ops (Slice, Gather, Pad,
Tile, Expand, nearest Resize, DepthToSpace, SpaceToDepth) whose index maps ONNX Runtime computes
on a tensor of position numbers."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...ir import GraphView, attr
from .kernels import MAX_FLOAT32_INDEX, geometry, pad, stab, unbroadcast, unpad, windows
from .step import ACTIVATION_DEPTH, PASS_THROUGH, Step, rule


# --------------------------------------------------------------------------- joins
def _signed_shares(st: Step, signs) -> list:
    """ε-rule of z = Σ_k sign_k·x_k: input k gets sign_k·x_k / stab(z) · R (unbroadcast);
    constants absorb their share."""
    xs = [st.inp(i) for i in range(len(st.node.input))]
    z = 0.0
    for sg, x in zip(signs, xs):
        if x is not None:
            z = z + sg * x
    s = st.r(0) / stab(np.asarray(z, dtype=np.float64), st.eps)
    return [None if x is None or st.is_const(i) else unbroadcast(sg * x * s, np.shape(x))
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
    return st.only(i, unbroadcast(st.r(0), st.shape(i)))


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
    return st.only(0, x * _reduced_relevance(st, axes) / stab(z, st.eps) / n)


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
    geo = geometry(st.node, x.shape[2:], ks, y.shape[2:])
    xp = pad(x, geo, -np.inf)
    r = st.r(0)
    gp = np.zeros(xp.shape)
    taken = np.zeros(y.shape, dtype=bool)
    for _, sl in windows(geo, ks, y.shape[2:]):
        hit = (xp[sl] == y) & ~taken
        gp[sl] += np.where(hit, r, 0.0)
        taken |= hit
    return st.only(0, unpad(gp, geo, x.shape[2:]))


@rule("AveragePool")
def _avgpool(st: Step):
    """ε-rule of each window's average, with ORT's divisor (count_include_pad or not)."""
    x = st.inp(0)
    if x is None or st.is_const(0):
        return st.none()
    r = st.r(0)
    ys = r.shape[2:]
    ks = [int(k) for k in attr(st.node, "kernel_shape")]
    geo = geometry(st.node, x.shape[2:], ks, ys)
    inner = np.ones((1, 1) + x.shape[2:])
    if int(attr(st.node, "count_include_pad", 0)):
        inner = np.pad(inner, [(0, 0), (0, 0)] + list(zip(geo.lo, geo.explicit_hi)),
                       constant_values=1.0)
        mask = np.pad(inner, [(0, 0), (0, 0)] + [(0, h - e) for h, e in
                                                zip(geo.hi, geo.explicit_hi)])
    else:
        mask = pad(inner, geo, 0.0)
    xp = pad(x, geo, 0.0)
    count = np.zeros((1, 1) + tuple(ys))
    z = np.zeros(r.shape)
    for _, sl in windows(geo, ks, ys):
        count += mask[sl]
        z += xp[sl]
    count = np.maximum(count, 1.0)
    s = r / stab(z / count, st.eps) / count
    gp = np.zeros(xp.shape)
    for _, sl in windows(geo, ks, ys):
        gp[sl] += s
    return st.only(0, x * unpad(gp, geo, x.shape[2:]))


# --------------------------------------------------------------------------- pass-through


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


class IndexMaps:
    """Source position of every output element of data-movement nodes, computed in ORT on a
    tensor of position numbers and cached per node, input shape and side-input values."""

    def __init__(self, model: onnx.ModelProto, runner):
        self.runner = runner
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
            x = np.arange(1, n + 1, dtype=dt).reshape(x_shape)
            y = self.runner.run(m, {"x": x}, ["y"])["y"]
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

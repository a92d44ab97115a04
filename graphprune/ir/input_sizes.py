"""Concrete sizes and values for the inputs of a model with symbolic dims.

Every ONNX Runtime run of graphprune (the reference and validation runs, shape probing, MAC
counting at concrete sizes) needs one concrete shape per graph input. An `InputPlan` says, for
every symbolic dim, where its size comes from, in this order:

1. sizes the user gave (``--input-shapes x:1x3x224x224``, `input_shapes=` in the API);
2. the data the user gave (the first batch of ``--calib`` arrays), which also fixes the values;
3. sizes the graph fixes: an input channel axis read by a Conv whose weight has 81 input
   channels is 81, a feature axis read by a Gemm or MatMul weight is that weight's K, and so on
   (`graph_input_dims`);
4. a dim name already sized on another input (``batch`` of ``x[0]`` and of ``h0[1]``);
5. a guess: 1 for a leading (batch) axis, 224 for the spatial axes of an image-like input
   (float, rank ≥ 4), 16 elsewhere. Guessed sizes are *free* (runs may try others) and are
   listed in `assumed`, which the report shows.

Values: ``--input-values sr=16000`` fixes an input's value (broadcast to its shape); given data
fixes every value; integer inputs with given data draw random values from the values seen there
(so an index stays in range at any size).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import UserError
from .graph import GraphView, attr
from .inputs import InputSpec, has_cache, input_specs, random_feeds, token_input

IMAGE_SIZE = 224
SEQUENCE_SIZE = 16


@dataclass
class InputPlan:
    """One concrete shape per graph input, where each size came from, and fixed values."""

    shapes: dict[str, list[int]]
    free: dict[str, list[int]] = field(default_factory=dict)  # axes whose size is a guess
    symbolic: dict[str, list[int]] = field(default_factory=dict)  # symbolic, not graph-fixed
    names: dict[str, list] = field(default_factory=dict)  # dim_param of every axis (or None)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # fixed values
    pools: dict[str, np.ndarray] = field(default_factory=dict)  # integer values to draw from
    samples: dict[str, np.ndarray] | None = None  # real data: one batch
    guessed: list = field(default_factory=list)  # (input, axis) whose size is a guess
    sampled: set = field(default_factory=set)  # inputs whose symbolic leading axis holds samples

    @property
    def assumed(self) -> list[str]:
        """The guessed sizes, as the report lists them: "x[2] (height) = 224"."""
        out = []
        for name, a in self.guessed:
            dp = self.names.get(name, [None] * (a + 1))[a]
            out.append(f"{name}[{a}]{f' ({dp})' if dp else ''} = {self.shapes[name][a]}")
        return out

    def adopt(self, feeds: dict) -> None:
        """Take the sizes of feeds a run succeeded with (another size for a guessed dim)."""
        for name, v in feeds.items():
            shape = list(np.shape(v))
            if name in self.shapes and len(shape) == len(self.shapes[name]):
                self.shapes[name] = shape

    def cost_shapes(self) -> dict[str, list[int]]:
        """The shapes MACs are counted at: the plan's, one sample where the given data set the
        leading (samples) axis."""
        return {k: ([1] + v[1:] if k in self.sampled and v else list(v))
                for k, v in self.shapes.items()}

    def shapes_at(self, batch: int | None = None, dynamic=None, axes: str = "free"
                  ) -> dict[str, list[int]]:
        """The planned shapes with the sizes of `axes` ("free": the guessed ones, "symbolic":
        every symbolic dim the graph does not fix) replaced: `batch` on leading axes,
        `dynamic` elsewhere (an int, or a function of the planned size); None keeps the
        plan's. Equal dim names stay equal."""
        which = self.free if axes == "free" else self.symbolic
        by_name: dict[str, int] = {}
        out = {}
        for name, shape in self.shapes.items():
            new = list(shape)
            for a in which.get(name, []):
                dp = self.names.get(name, [None] * len(shape))[a]
                if dp is not None and dp in by_name:
                    new[a] = by_name[dp]
                    continue
                size = batch if a == 0 else dynamic
                if callable(size):
                    size = size(shape[a])
                if size is not None:
                    new[a] = max(1, int(size))
                if dp is not None:
                    by_name[dp] = new[a]
            out[name] = new
        return out

    def feeds(self, specs: list[InputSpec], seed: int = 0,
              shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
        """Feeds at `shapes` (default: the plan's): given values broadcast, integers drawn from
        the given data's values, the rest seeded random (as `inputs.random_feeds`)."""
        shapes = shapes or self.shapes
        if has_cache(specs):  # a decoder's cache: the sizes of its inputs are related
            return self._cache_feeds(specs, seed, shapes)
        rng = np.random.default_rng(seed)
        out = {}
        for s in specs:
            shape = shapes.get(s.name, [1 if not isinstance(d, int) else d for d in s.shape])
            if s.name in self.values:
                v = np.asarray(self.values[s.name]).astype(s.dtype)
                out[s.name] = v if list(v.shape) == list(shape) else np.broadcast_to(v, shape).copy()
            elif s.dtype == np.bool_:
                out[s.name] = rng.random(shape) > 0.5
            elif s.is_int:
                pool = self.pools.get(s.name)
                vals = (rng.choice(pool, size=shape) if pool is not None and pool.size
                        else rng.integers(0, 2, size=shape))
                out[s.name] = np.asarray(vals).astype(s.dtype)
            else:
                out[s.name] = rng.standard_normal(shape).astype(s.dtype)
        return out

    def _cache_feeds(self, specs: list[InputSpec], seed: int, shapes: dict) -> dict:
        """A KV-cache decoder's feeds keep its contract (`inputs.cache_feeds`: mask = past +
        current, one past length): batch and current length from the token input's planned
        shape, a past of half the tokens for one sequence and a prefill (empty past) for a
        batch, as `inputs.random_feeds`; given values and data replace their inputs."""
        tok = token_input(specs)
        batch, seq = (list(shapes.get(tok, (1, 16))) + [1, 16])[:2] if tok else (1, 16)
        feeds = random_feeds(specs, seed=seed, dynamic=int(seq), batch=int(batch))
        for s in specs:
            if s.name in self.values:
                v = np.asarray(self.values[s.name]).astype(s.dtype)
                feeds[s.name] = v if v.shape == feeds[s.name].shape else \
                    np.broadcast_to(v, feeds[s.name].shape).copy()
        return feeds


def _image_like(spec: InputSpec) -> bool:
    return (np.issubdtype(spec.dtype, np.floating) and len(spec.shape) >= 4
            and any(not isinstance(d, int) or d <= 0 for d in spec.shape[2:]))


def plan_inputs(model: onnx.ModelProto, shapes: dict | None = None, values: dict | None = None,
                samples: dict | None = None) -> InputPlan:
    """The plan for `model` (see the module docstring). `shapes`: input name → sizes;
    `values`: input name → value; `samples`: input name → one batch of real data."""
    specs = input_specs(model)
    known = {s.name for s in specs}
    for what, given in (("--input-shapes", shapes), ("--input-values", values)):
        unknown = sorted(set(given or {}) - known)
        if unknown:
            raise UserError(f"{what}: the model has no input {unknown[0]!r} (inputs: "
                            f"{sorted(known)})")
    shapes, values, samples = dict(shapes or {}), dict(values or {}), dict(samples or {})
    derived = graph_input_dims(model)
    image = any(_image_like(s) for s in specs)
    by_name: dict[str, tuple[int, bool]] = {}
    plan = InputPlan(shapes={}, samples=samples or None)
    for s in specs:
        given = shapes.get(s.name)
        if s.name in samples and given is None:
            given = list(np.shape(samples[s.name]))
            if s.shape and not (isinstance(s.shape[0], int) and s.shape[0] > 0):
                plan.sampled.add(s.name)
        if given is not None and len(given) != len(s.shape):
            raise UserError(f"input {s.name!r} has rank {len(s.shape)}; got sizes {list(given)}")
        shape, free, symbolic = [], [], []
        for a, d in enumerate(s.shape):
            dp = d if isinstance(d, str) else None
            if not (isinstance(d, int) and d > 0) and (s.name, a) not in derived:
                symbolic.append(a)
            if isinstance(d, int) and d > 0:
                if given is not None and int(given[a]) != d and s.name not in samples:
                    raise UserError(f"input {s.name!r} has the static size {d} on axis {a}; "
                                    f"got {int(given[a])}")
                size = d
            elif given is not None:
                size = int(given[a])
            elif (s.name, a) in derived:
                size = derived[(s.name, a)]
            elif dp is not None and dp in by_name:
                size, was_free = by_name[dp]
                if was_free:
                    free.append(a)
            else:
                size = 1 if a == 0 else (IMAGE_SIZE if image and _image_like(s) else
                                         SEQUENCE_SIZE)
                free.append(a)
                plan.guessed.append((s.name, a))
            if dp is not None and dp not in by_name:
                by_name[dp] = (size, a in free)
            shape.append(int(size))
        plan.shapes[s.name] = shape
        plan.names[s.name] = [d if isinstance(d, str) else None for d in s.shape]
        if free:
            plan.free[s.name] = free
        if symbolic:
            plan.symbolic[s.name] = symbolic
        if s.name in values:
            plan.values[s.name] = np.asarray(values[s.name], dtype=s.dtype)
        if s.name in samples and s.is_int:
            plan.pools[s.name] = np.unique(np.asarray(samples[s.name]))
    return plan


# ------------------------------------------------------------------- sizes the graph fixes
_SAME_SHAPE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Gelu", "Softplus", "Abs",
               "Neg", "Exp", "Log", "Sqrt", "Clip", "Cast", "Identity", "Dropout", "HardSigmoid",
               "HardSwish", "Erf", "Mish", "Softsign", "PRelu", "Scaler", "Normalizer",
               "Softmax", "LogSoftmax", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}


def graph_input_dims(model: onnx.ModelProto) -> dict[tuple[str, int], int]:
    """Sizes of symbolic input dims that the graph fixes: following each graph input through
    ops that keep its axes (activations, casts, elementwise ops, Transpose) to the first op
    whose weight fixes an axis (Conv/ConvTranspose input channels, Gemm/MatMul K, LSTM/GRU/RNN
    input size, BatchNormalization/InstanceNormalization channels, LayerNormalization scale,
    a constant operand of an elementwise op)."""
    view = GraphView(model)
    out: dict[tuple[str, int], int] = {}
    for name in view.graph_inputs:
        rank = len(_declared(model, name) or ())
        # tensor name -> input axis of each of its axes (None: not an input axis)
        todo = [(name, list(range(rank)))]
        seen = set()
        while todo:
            t, axes = todo.pop()
            if t in seen or len(seen) > 64:
                continue
            seen.add(t)
            for node in view.consumers.get(t, []):
                for axis_in, size in _fixed_by(view, node, t, len(axes)):
                    src = axes[axis_in] if 0 <= axis_in < len(axes) else None
                    if src is not None and size > 0:
                        out.setdefault((name, src), int(size))
                nxt = _passes_to(view, node, t, axes)
                if nxt is not None:
                    todo.append(nxt)
    return out


def _declared(model, name):
    for vi in model.graph.input:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return vi.type.tensor_type.shape.dim
    return None


def _cshape(view: GraphView, name: str):
    c = view.consts.get(name) if name else None
    return None if c is None else tuple(c.shape)


def _fixed_by(view: GraphView, node, t: str, rank: int) -> list[tuple[int, int]]:
    """(axis of `t`, size) pairs that `node`'s constant operands fix."""
    op, ins = node.op_type, list(node.input)
    if node.domain not in ("", "ai.onnx"):
        return []
    w = _cshape(view, ins[1]) if len(ins) > 1 else None
    if op == "Conv" and ins[0] == t and w and len(w) >= 2:
        return [(1, w[1] * int(attr(node, "group", 1)))]
    if op == "ConvTranspose" and ins[0] == t and w:
        return [(1, w[0])]
    if op == "Gemm" and w and ins[0] == t and len(w) == 2:
        return [(0 if attr(node, "transA", 0) else 1, w[1] if attr(node, "transB", 0) else w[0])]
    if op == "MatMul" and ins[0] == t and w and len(w) >= 2 and rank >= 1:
        return [(rank - 1, w[-2])]
    if op in ("LSTM", "GRU", "RNN") and ins[0] == t and w and len(w) == 3:
        return [(2, w[2])]
    if op in ("BatchNormalization", "InstanceNormalization") and ins[0] == t and w:
        return [(1, w[0])]
    if op == "LayerNormalization" and ins[0] == t and w:
        return [(rank - len(w) + k, d) for k, d in enumerate(w) if d > 1]
    if op in ("Add", "Sub", "Mul", "Div", "PRelu") and t in ins:
        fixed = []
        for other in ins:
            s = _cshape(view, other) if other != t else None
            if s:
                fixed += [(rank - len(s) + k, d) for k, d in enumerate(s)
                          if d > 1 and rank - len(s) + k >= 0]
        return fixed
    return []


def _passes_to(view: GraphView, node, t: str, axes: list):
    """The node's output and the input axis of each of its axes, for ops that keep `t`'s
    axes (same shape, or a Transpose); None otherwise."""
    if not node.output or node.domain not in ("", "ai.onnx", "ai.onnx.ml"):
        return None
    if node.op_type == "Transpose":
        perm = attr(node, "perm", list(range(len(axes)))[::-1])
        return node.output[0], [axes[p] if p < len(axes) else None for p in perm]
    if node.op_type not in _SAME_SHAPE:
        return None
    others = [i for i in node.input if i and i != t]
    if node.input[0] == t or all(
            (_cshape(view, i) is not None and len(_cshape(view, i)) <= len(axes)) for i in others):
        return node.output[0], list(axes)
    return None

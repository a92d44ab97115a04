"""The inputs a graph expects: their names, types and shapes, and feeds made for them.

Everything that runs a model (validation, calibration, fidelity, benchmarks, language-model
checks) needs inputs of the right names, dtypes and shapes. They are read from the ModelProto's
graph inputs (initializers excluded), so no ONNX Runtime session is needed to make them:

- `random_feeds`: seeded random arrays; symbolic dims get `batch` (axis 0) or `dynamic`, equal
  dim names one size; integer inputs get small non-negative values (safe as indices);
- `text_feeds`: token windows for a language model, other text inputs filled by name
  (``attention_mask`` ones, ``position_ids`` 0..seq-1, ``token_type_ids`` zeros, KV-cache
  inputs an empty past).

A decoder with a KV cache (`graphprune.ir.cache`) takes inputs whose sizes are related: the
past ``[batch, kv_heads, past, head_dim]`` of every layer has one past length P, the attention
mask covers past + current tokens (exactly, for ONNX Runtime GenAI's GroupQueryAttention),
position ids run P..P+S-1. Random feeds keep those relations (P = 0 is a prefill), and the
head size of a cache input declared with a symbol is taken from the weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import UserError
from .cache import PAST, cache_head_dims

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.INT16: np.int16,
}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype and dims (int, a symbolic name, or None)."""

    name: str
    dtype: type
    shape: tuple

    @property
    def is_int(self) -> bool:
        return np.issubdtype(self.dtype, np.integer)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a caller feeds (initializers listed as inputs excluded), in order."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = []
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
        out.append(InputSpec(vi.name, _NP_TYPES.get(tt.elem_type, np.float32), tuple(dims)))
    if any(_is_past(s) and not all(isinstance(d, int) for d in (s.shape[1], s.shape[3]))
           for s in out):
        sizes = cache_head_dims(model)
        out = [_with_cache_dims(s, sizes.get(s.name)) for s in out]
    return out


def _is_past(spec: InputSpec) -> bool:
    return len(spec.shape) == 4 and bool(PAST.match(spec.name))


def _with_cache_dims(spec: InputSpec, sizes) -> InputSpec:
    if sizes is None:
        return spec
    shape = list(spec.shape)
    for axis, v in zip((1, 3), sizes):
        if v is not None and not isinstance(shape[axis], int):
            shape[axis] = int(v)
    return InputSpec(spec.name, spec.dtype, tuple(shape))


def has_cache(specs: list[InputSpec]) -> bool:
    """Whether the inputs include a decoder's KV cache (past key/value per layer)."""
    return any(_is_past(s) for s in specs)


def token_input(specs: list[InputSpec]) -> str | None:
    """The integer input that takes token ids (named like ``input_ids``, else the only one)."""
    ints = [s for s in specs if s.dtype in (np.int64, np.int32) and not _is_past(s)]
    return next((s.name for s in ints if "ids" in s.name.lower()
                 and "type" not in s.name.lower() and "position" not in s.name.lower()),
                ints[0].name if len(ints) == 1 else None)


def concrete_shape(spec: InputSpec, batch: int = 1, dynamic: int = 1) -> list[int]:
    """The spec's shape with symbolic dims set: `batch` on axis 0, `dynamic` elsewhere."""
    return [d if isinstance(d, int) and d > 0 else (batch if k == 0 else dynamic)
            for k, d in enumerate(spec.shape)]


def concrete_shapes(specs: list[InputSpec], batch: int = 1, dynamic: int = 1
                    ) -> dict[str, list[int]]:
    """`concrete_shape` of every spec, with equal dim names sized alike (the `batch` of
    `x[0]` and of `h0[1]` get the size of their first occurrence)."""
    by_name: dict[str, int] = {}
    out = {}
    for s in specs:
        shape = concrete_shape(s, batch, dynamic)
        for k, d in enumerate(s.shape):
            if isinstance(d, str):
                shape[k] = by_name.setdefault(d, shape[k])
        out[s.name] = shape
    return out


def random_feeds(specs: list[InputSpec], seed: int = 0, dynamic: int = 1,
                 batch: int = 1, past: int | None = None) -> dict[str, np.ndarray]:
    """Seeded random feeds for `specs` (see the module docstring). For a decoder with a KV
    cache, `dynamic` is the number of current tokens and `past` the past length (default
    dynamic // 2 for one sequence, 0 (a prefill) for a batch: GroupQueryAttention takes a
    past with several current tokens only for batch 1)."""
    if has_cache(specs):
        if past is None:
            past = dynamic // 2 if batch == 1 else 0
        return cache_feeds(specs, seed, seq=dynamic, batch=batch, past=past)
    rng = np.random.default_rng(seed)
    feeds = {}
    shapes = concrete_shapes(specs, batch, dynamic)
    for s in specs:
        shape = shapes[s.name]
        if s.dtype == np.bool_:
            feeds[s.name] = rng.random(shape) > 0.5
        elif s.is_int:
            feeds[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
        else:
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
    return feeds


def cache_feeds(specs: list[InputSpec], seed: int = 0, seq: int = 16, batch: int = 1,
                past: int = 0, ids: np.ndarray | None = None,
                pasts: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Feeds of a decoder with a KV cache that keep its contract: every past ``[batch,
    kv_heads, past, head_dim]`` (`pasts`, else random values, or empty for `past` 0), the
    attention mask ``[batch, past + seq]`` of ones, position ids ``past .. past + seq - 1``,
    token ids `ids` (else random 0/1). Other inputs get random values, their symbolic sizes
    `seq`."""
    rng = np.random.default_rng(seed)
    if pasts:
        past = next(iter(pasts.values())).shape[2]
    tok = token_input(specs)
    if ids is not None:
        batch, seq = ids.shape
    sizes: dict = {}
    for s in specs:  # the symbols of batch, past and current length, as the model names them
        if s.shape and not isinstance(s.shape[0], int):
            sizes.setdefault(s.shape[0], batch)
        if _is_past(s) and not isinstance(s.shape[2], int):
            sizes.setdefault(s.shape[2], past)
        if s.name == tok and len(s.shape) > 1 and not isinstance(s.shape[1], int):
            sizes.setdefault(s.shape[1], seq)
    feeds = {}
    for s in specs:
        low = s.name.lower()
        shape = [d if isinstance(d, int) and d > 0 else sizes.get(d, seq) for d in s.shape]
        if s.shape and not (isinstance(s.shape[0], int) and s.shape[0] > 0):
            shape[0] = batch
        if _is_past(s) and pasts and s.name in pasts:
            feeds[s.name] = pasts[s.name]
        elif _is_past(s):
            shape[2] = past
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        elif s.name == tok:
            feeds[s.name] = (ids.astype(s.dtype) if ids is not None
                             else rng.integers(0, 2, size=(batch, seq)).astype(s.dtype))
        elif "mask" in low and len(s.shape) == 2:
            feeds[s.name] = np.ones((batch, past + seq), dtype=s.dtype)
        elif "position" in low and len(s.shape) == 2:
            feeds[s.name] = np.broadcast_to(np.arange(past, past + seq, dtype=s.dtype),
                                            (batch, seq)).copy()
        elif s.dtype == np.bool_:
            feeds[s.name] = rng.random(shape) > 0.5
        elif s.is_int:
            feeds[s.name] = np.zeros(shape, dtype=s.dtype) if "type" in low else \
                rng.integers(0, 2, size=shape).astype(s.dtype)
        else:
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
    return feeds


def static_batch(specs: list[InputSpec]) -> int | None:
    """The batch size every input fixes on axis 0, or None when it is symbolic."""
    dims = {s.shape[0] if s.shape else None for s in specs}
    d = dims.pop() if len(dims) == 1 else None
    return d if isinstance(d, int) and d > 0 else None


def symbolic_batch(specs: list[InputSpec]) -> bool:
    """Whether no input fixes its leading dimension (feeds may be cut into any batch)."""
    return all(not (s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0) for s in specs)


def text_feeds(specs: list[InputSpec], windows: np.ndarray) -> dict[str, np.ndarray]:
    """Graph inputs for token windows [n, seq]: the integer input named like ``input_ids``
    (or the only integer input) gets the windows; see the module docstring for the others."""
    ids = token_input(specs)
    if ids is None:
        raise UserError("--calib-text: the model has no integer token-id input (inputs: "
                        f"{[s.name for s in specs]})")
    n, seq = windows.shape
    feeds = {}
    for s in specs:
        low = s.name.lower()
        if s.name == ids:
            feeds[s.name] = windows.astype(s.dtype)
        elif "mask" in low:
            feeds[s.name] = np.ones((n, seq), dtype=s.dtype)
        elif "position" in low:
            feeds[s.name] = np.broadcast_to(np.arange(seq, dtype=s.dtype), (n, seq)).copy()
        elif "type" in low:
            feeds[s.name] = np.zeros((n, seq), dtype=s.dtype)
        elif _is_past(s) and all(isinstance(d, int) for d in (s.shape[1], s.shape[3])):
            feeds[s.name] = np.zeros((n, s.shape[1], 0, s.shape[3]), dtype=s.dtype)  # prefill
        else:
            raise UserError(f"--calib-text: cannot fill model input {s.name!r} from text "
                            "(known: token ids, attention_mask, position_ids, token_type_ids, "
                            "past_key_values.N.key/value)")
    return feeds


def sample_inputs(specs: list[InputSpec]) -> set[str]:
    """The inputs whose axis 0 carries samples: those with a symbolic leading dim when there
    are any (a recurrent state [layers, batch, hidden] or a scalar is passed whole), else every
    input of rank ≥ 1 (a static batch)."""
    sym = {s.name for s in specs if s.shape and not (isinstance(s.shape[0], int) and s.shape[0] > 0)}
    return sym or {s.name for s in specs if s.shape}


def feed_batches(specs: list[InputSpec], feeds: dict[str, np.ndarray],
                 chunk: int = 64) -> list[dict[str, np.ndarray]]:
    """Arrays with samples on axis 0 cut into the batches the model takes: chunks of its static
    batch size (a remainder that does not fill one is dropped), else of up to `chunk`. Inputs
    without a samples axis (see `sample_inputs`) go whole into every batch."""
    static = static_batch(specs)
    sampled = sample_inputs(specs) & set(feeds)
    n = min((len(feeds[k]) for k in sampled), default=1)
    step = static or chunk
    end = n - (n % static if static else 0)
    out = [{k: v[s:s + step] if k in sampled else v for k, v in feeds.items()}
           for s in range(0, end, step)]
    if not out:
        raise UserError(f"calibration data has {n} samples; the model needs batches of {static}")
    return out


def parse_input_shapes(spec) -> dict[str, tuple[int, ...]]:
    """{name: dims} from a dict, or from the command line's `name:1x3x224x224,other:1x128`."""
    if not spec:
        return {}
    if isinstance(spec, str):
        items = {}
        for part in spec.split(","):
            name, sep, dims = part.strip().rpartition(":")
            if not sep or not name:
                raise UserError(f"--input-shapes takes name:DxDx...,name:Dx..., got {part!r}")
            items[name] = dims.lower().split("x")
        spec = items
    out = {}
    for name, dims in spec.items():
        try:
            shape = tuple(int(d) for d in dims)
        except (TypeError, ValueError):
            shape = ()
        if not shape or any(d < 1 for d in shape):
            raise UserError(f"--input-shapes {name}: dims must be positive integers, got {dims!r}")
        out[str(name)] = shape
    return out


def check_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every named input exists, has that rank, and agrees with its static dims."""
    specs = {s.name: s for s in input_specs(model)}
    for name, dims in shapes.items():
        s = specs.get(name)
        if s is None:
            raise UserError(f"--input-shapes: the model has no input {name!r} (inputs: "
                            f"{', '.join(specs) or 'none'})")
        if s.shape and len(s.shape) != len(dims):
            raise UserError(f"--input-shapes {name}: rank {len(dims)}, the input has rank "
                            f"{len(s.shape)} {list(s.shape)}")
        for k, (d, want) in enumerate(zip(s.shape, dims)):
            if isinstance(d, int) and d > 0 and d != want:
                raise UserError(f"--input-shapes {name}: axis {k} is {d} in the model, not {want}")


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict:
    """Give the named graph inputs static dims (in place). Returns what `restore_input_shapes`
    needs to put the model's own dims back."""
    check_input_shapes(model, shapes)
    saved = {}
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        old = onnx.TypeProto()
        old.CopyFrom(vi.type)
        saved[vi.name] = old
        shape = vi.type.tensor_type.shape
        shape.ClearField("dim")
        for d in shapes[vi.name]:
            shape.dim.add().dim_value = int(d)
    return saved


def restore_input_shapes(model: onnx.ModelProto, saved: dict) -> None:
    for vi in model.graph.input:
        if vi.name in saved:
            vi.type.CopyFrom(saved[vi.name])


def with_shapes(specs: list[InputSpec], shapes: dict | None) -> list[InputSpec]:
    """`specs` with the dims `shapes` fixes."""
    if not shapes:
        return specs
    return [InputSpec(s.name, s.dtype, tuple(shapes[s.name])) if s.name in shapes else s
            for s in specs]

"""Calibration inputs checked against the model before any heavy work.

Whatever feeds a model (an ``.npz`` file, arrays given to the API, decoded images, token windows
cut from text, random samples) is checked here first, so bad data is one clear `UserError`
instead of an error deep inside ONNX Runtime or a linear solve:

- one array per graph input, numeric (no strings, objects or complex numbers), of the input's
  rank, every static size equal to the model's (samples along axis 0, at least one batch);
- floating-point values finite (no NaN or infinity), also after the cast to the input's type;
  integer inputs given integral values that fit their type;
- integer inputs that a `Gather` uses to index a constant table (token ids into an embedding,
  positions into a position table) within the table's rows;
- at most `MAX_CALIB_BYTES` of samples, and at most `MAX_RANDOM_SAMPLES` random samples;
- labels integers, one per sample, non-negative (and below the class count when the model has
  a static ``[N, K]`` output).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from ..errors import UserError
from ..ir.inputs import InputSpec, concrete_shape, input_specs, sample_inputs, static_batch

MAX_CALIB_BYTES = 1 << 30  # samples held in memory at once (what validation allows an input)
MAX_RANDOM_SAMPLES = 1 << 14


def check_feeds(model: onnx.ModelProto, feeds: dict, where: str = "",
                ragged: bool = False) -> dict[str, np.ndarray]:
    """The arrays for every graph input of `model`, checked (see the module docstring) and
    cast to the inputs' dtypes. `where` prefixes every message (e.g. the file name). Inputs
    without a samples axis (a scalar, a recurrent state [layers, batch, hidden] next to inputs
    with a symbolic batch: `sample_inputs`) are fed whole; with `ragged`, arrays may disagree
    on their number of samples (one feed, not samples: a time-major input and its lengths)."""
    specs = input_specs(model)
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise UserError(f"{where}no array for model input(s) {', '.join(missing)} (given: "
                        f"{', '.join(sorted(map(str, feeds))) or 'nothing'})")
    out: dict[str, np.ndarray] = {}
    n = None
    total = 0
    sampled = sample_inputs(specs)
    lead = None  # the leading dim of the first input with a samples axis
    for spec in specs:
        whole = spec.name not in sampled
        a = _checked(np.asarray(feeds[spec.name]), spec, where, whole)
        total += a.nbytes
        out[spec.name] = a
        if whole:
            continue
        # leading dims of different names (x [seq, batch, 8] beside lengths [batch]) are no
        # common samples axis: such arrays are one feed
        other_dim = lead is not None and isinstance(spec.shape[0], str) and \
            isinstance(lead, str) and spec.shape[0] != lead
        if n is not None and len(a) != n and not (ragged or other_dim):
            raise UserError(f"{where}arrays have different numbers of samples ({n} and "
                            f"{len(a)} for '{spec.name}')")
        lead = spec.shape[0] if lead is None else lead
        n = len(a) if n is None else min(n, len(a))
    if total > MAX_CALIB_BYTES:
        raise UserError(f"{where}calibration data takes {total:,} bytes; at most "
                        f"{MAX_CALIB_BYTES:,} are accepted (give fewer samples)")
    if n is None and not sampled:
        n = 1  # only inputs fed whole
    if not n:
        raise UserError(f"{where}calibration data has no samples")
    b = static_batch(specs)
    if b and n < b:
        raise UserError(f"{where}calibration data has {n} samples, fewer than the model's "
                        f"static batch of {b}")
    for name, (rows, table) in index_bounds(model).items():
        a = out.get(name)
        if a is None or not a.size:
            continue
        bad = np.flatnonzero(((a < 0) | (a >= rows)).reshape(len(np.atleast_1d(a)), -1)
                             .any(axis=1))
        if len(bad):
            row = a[bad[0]].reshape(-1)
            v = int(row[(row < 0) | (row >= rows)][0])
            raise UserError(f"{where}input '{name}' has value {v} (sample {int(bad[0])}), "
                            f"outside [0, {rows}): the rows of '{table}' it indexes (token ids "
                            "beyond the vocabulary?)")
    return out


def _checked(a: np.ndarray, spec: InputSpec, where: str, whole: bool = False) -> np.ndarray:
    name = spec.name
    target = np.dtype(spec.dtype)
    if a.dtype.kind not in "biuf":
        raise UserError(f"{where}array '{name}' has dtype {a.dtype}; the model input takes "
                        f"{target}")
    if a.ndim != len(spec.shape) or (a.ndim == 0 and not whole):
        raise UserError(f"{where}array '{name}' has rank {a.ndim}, the model input has rank "
                        f"{len(spec.shape)} (samples go along axis 0)")
    for k in range(0 if whole else 1, a.ndim):
        d = spec.shape[k]
        if isinstance(d, int) and d > 0 and a.shape[k] != d:
            want = ["N"] + [x if isinstance(x, int) and x > 0 else "?" for x in spec.shape[1:]]
            raise UserError(f"{where}array '{name}' has shape {list(a.shape)}; the model input "
                            f"takes [{', '.join(map(str, want))}] (samples along axis 0)")
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            k = int(np.argwhere(np.atleast_1d(~finite))[0][0])
            raise UserError(f"{where}array '{name}' holds NaN or infinite values (sample {k})")
    if target.kind in "iu":
        if a.dtype.kind == "f" and a.size and not np.array_equal(a, np.round(a)):
            raise UserError(f"{where}array '{name}' holds non-integer values; the model input "
                            f"takes {target}")
        info = np.iinfo(target)
        if a.size and a.dtype.kind != "b" and (a.min() < info.min or a.max() > info.max):
            raise UserError(f"{where}array '{name}' holds values outside the range of {target}")
    out = a.astype(target, copy=False)
    if target.kind == "f" and a.dtype.kind in "iuf" and a.size and not np.isfinite(out).all():
        raise UserError(f"{where}array '{name}' holds values too large for {target}")
    return out


def index_bounds(model: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    """Graph inputs that a `Gather` uses as indices into a constant table: input name ->
    (rows of the smallest such table, its name)."""
    inputs = {s.name for s in input_specs(model) if s.is_int}
    if not inputs:
        return {}
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    dims[node.output[0]] = list(a.t.dims)
    out: dict[str, tuple[int, str]] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        data, idx = node.input[0], node.input[1]
        if idx not in inputs or data not in dims:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        shape = dims[data]
        if not -len(shape) <= axis < len(shape):
            continue
        rows = int(shape[axis])
        if idx not in out or rows < out[idx][0]:
            out[idx] = (rows, data)
    return out


def check_random_count(model: onnx.ModelProto, n) -> int:
    """N for N random calibration samples: an integer in [1, MAX_RANDOM_SAMPLES] whose samples
    fit in MAX_CALIB_BYTES (symbolic sizes other than the batch count as 16)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise UserError(f"--calib-random takes a whole number of samples, got {n!r}")
    n = int(n)
    if not 1 <= n <= MAX_RANDOM_SAMPLES:
        raise UserError(f"--calib-random must be in [1, {MAX_RANDOM_SAMPLES}], got {n}")
    per = sum(int(np.prod(concrete_shape(s, 1, 16), dtype=np.int64)) * np.dtype(s.dtype).itemsize
              for s in input_specs(model))
    if per * n > MAX_CALIB_BYTES:
        raise UserError(f"--calib-random {n}: {n} samples of this model take {per * n:,} bytes; "
                        f"at most {MAX_CALIB_BYTES:,} are accepted (at most "
                        f"{max(1, MAX_CALIB_BYTES // max(per, 1))} samples)")
    return n


def read_labels(source, n: int, model: onnx.ModelProto | None = None) -> np.ndarray:
    """Labels from a text file (one integer per line) or an array: n of them, integers >= 0,
    below the class count when the model has one static `[N, K]` float output."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        try:
            lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            raise UserError(f"--labels {p}: cannot read it ({e.strerror or e})") from None
        values = []
        for k, line in enumerate(lines, 1):
            s = line.strip()
            if not s:
                continue
            try:
                values.append(int(s))
            except ValueError:
                raise UserError(f"--labels {p}: line {k} is {s[:40]!r}, not an integer class "
                                "id") from None
        lab, shown = np.array(values, dtype=np.int64), f"--labels {p}"
    else:
        a = np.asarray(source).reshape(-1)
        if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.isfinite(a).all()
                                             and np.array_equal(a, np.round(a))):
            raise UserError("labels must be integer class ids")
        lab, shown = a.astype(np.int64), "labels"
    if len(lab) != n:
        raise UserError(f"{shown}: {len(lab)} labels for {n} samples")
    classes = _classes(model) if model is not None else None
    out_of_range = lab < 0
    if classes:
        out_of_range |= lab >= classes
    bad = np.flatnonzero(out_of_range)
    if len(bad):
        k = int(bad[0])
        where = f"line {k + 1}" if shown != "labels" else f"sample {k}"
        rng = f"[0, {classes})" if classes else "0 or more"
        raise UserError(f"{shown}: class ids must be {rng}; {where} has {int(lab[k])}")
    return lab


def _classes(model: onnx.ModelProto) -> int | None:
    """K when the model's only float output is a static [N, K] (K > 1), else None."""
    outs = [o for o in model.graph.output if o.type.tensor_type.elem_type in (
        onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)]
    if len(outs) != 1:
        return None
    dims = outs[0].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 1:
        return int(dims[1].dim_value)
    return None

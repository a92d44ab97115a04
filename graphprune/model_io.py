"""Reading and writing models: shape inference on load, atomic writes, metadata kept."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import UserError
from .ir import shapes_from_model

TWO_GB = 2 ** 31 - 1


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load a model file (with its external data, resolved inside the model's folder)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a folder, expected an .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise UserError(f"{p}: not a readable ONNX model ({_first_line(e)})") from e
    except Exception as e:  # protobuf raises assorted errors on garbage
        raise UserError(f"{p}: not a readable ONNX model ({_first_line(e)})") from e
    if not model.graph.node:
        raise UserError(f"{p}: the model has no graph nodes")
    return model


def infer_shapes(model: onnx.ModelProto) -> dict:
    """Static shapes of all values, from ONNX shape inference with data propagation.

    Runs on a copy without the large weights (inference needs their shapes, not their bytes),
    so the user's model keeps exactly the value_info it came with and nothing big is copied.
    """
    from .fold import light_copy

    copy = light_copy(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:
        try:
            inferred = onnx.shape_inference.infer_shapes(copy)
        except Exception:
            inferred = copy
    return shapes_from_model(inferred)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool = False) -> int:
    """Write atomically (temp file in the target folder, then rename). Returns bytes written.

    External data is used on request or when the model cannot fit one protobuf (> 2 GB); the
    data file is written atomically beside the model as `<name>.data`.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{folder}: output folder does not exist")
    if not external_data and model.ByteSize() > TWO_GB:
        external_data = True
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp_data = None
    try:
        if external_data:
            data_name = p.name + ".data"
            tmp_data = folder / f".{data_name}.tmp"
            m = onnx.ModelProto()
            m.CopyFrom(model)
            onnx.save_model(m, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=1024)
            # point the model at the final data file name, then move both into place
            m2 = onnx.load(tmp, load_external_data=False)
            for t in _all_tensors(m2):
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            with open(tmp, "wb") as f:
                f.write(m2.SerializeToString())
            os.replace(tmp_data, folder / data_name)
        else:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
        os.replace(tmp, p)
    except BaseException:
        for t in (tmp, tmp_data):
            if t and os.path.exists(t):
                os.unlink(t)
        raise
    size = p.stat().st_size
    if external_data and (folder / (p.name + ".data")).exists():
        size += (folder / (p.name + ".data")).stat().st_size
    return size


def _all_tensors(model):
    yield from model.graph.initializer
    for n in model.graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a model on disk including its external data files."""
    p = Path(path)
    total = p.stat().st_size
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception:
        return total
    seen = set()
    for t in _all_tensors(m):
        for e in t.external_data:
            if e.key == "location" and e.value not in seen:
                seen.add(e.value)
                f = p.parent / e.value
                if f.exists():
                    total += f.stat().st_size
    return total

"""Loading a model file safely.

Loading never trusts the file. Before any data is read:

* every external-data `location` must stay inside the model's folder (no absolute path, no `..`,
  no symlink leading out; a model file that is itself a symlink may also read data files lying
  beside its real path, as in a Hugging Face cache), checked for every tensor before any data
  file is opened; a hard-linked data file is refused;
* every tensor's declared shape must match the bytes it stores, inline or in its data file, so a
  tensor declaring 10^12 elements is refused before anything is allocated;
* the graph must be well formed (`graphprune.ir.sanity.check_graph_sanity`).

Large external tensors of the main graph stay on disk (see `graphprune.ir.storage`).
"""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from ..errors import UserError
from .sanity import check_graph_sanity
from .storage import (KNOWN_KEYS, LAZY_MIN_BYTES, SUBBYTE_BITS, ExternalInfo, WeightStore,
                      all_tensors, ext_info, load_inline, model_folders, numel, resolve_location,
                      set_external, storage_nbytes)


def _check_payload(t: TensorProto, where: str) -> None:
    """The bytes an inline tensor stores match its declared shape."""
    if any(d < 0 for d in t.dims):
        raise UserError(f"{where}tensor '{t.name}' declares a negative dimension {list(t.dims)}")
    count = numel(t.dims)
    dt = t.data_type
    if t.HasField("raw_data"):
        want = storage_nbytes(dt, count)
        if want is not None and want != len(t.raw_data):
            raise UserError(f"{where}tensor '{t.name}' declares shape {list(t.dims)} "
                            f"({want} bytes) but stores {len(t.raw_data)} bytes")
        return
    stored = {TensorProto.FLOAT: len(t.float_data), TensorProto.COMPLEX64: len(t.float_data) // 2,
              TensorProto.DOUBLE: len(t.double_data),
              TensorProto.COMPLEX128: len(t.double_data) // 2,
              TensorProto.INT64: len(t.int64_data), TensorProto.UINT32: len(t.uint64_data),
              TensorProto.UINT64: len(t.uint64_data),
              TensorProto.STRING: len(t.string_data)}.get(dt)
    if dt in SUBBYTE_BITS:
        ok = len(t.int32_data) == (count * SUBBYTE_BITS[dt] + 7) // 8
    elif stored is None:  # int32_data holds one element each for the remaining types
        ok = len(t.int32_data) == count
    else:
        ok = stored == count
    if not ok:
        raise UserError(f"{where}tensor '{t.name}' declares shape {list(t.dims)} ({count} "
                        "elements) but stores a different number of values")


def check_tensor_storage(model: onnx.ModelProto, folder: str | None, where: str = "",
                         also: str | None = None
                         ) -> list[tuple[TensorProto, bool, str, ExternalInfo]]:
    """Refuse hostile or inconsistent tensor storage; returns the external tensors with their
    resolved data file.

    All locations are checked first (no file is opened before every one is known to lie inside
    the model's folder), then sizes are compared with the files (stat only, nothing read).
    """
    ext = []
    for t, main in all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            _check_payload(t, where)
            continue
        unknown = sorted({e.key for e in t.external_data} - KNOWN_KEYS)
        if unknown:
            raise UserError(f"{where}tensor '{t.name}': unknown external data key(s) {unknown}")
        if t.HasField("raw_data"):
            raise UserError(f"{where}tensor '{t.name}' is marked external but also stores data")
        if folder is None:
            raise UserError(f"{where}tensor '{t.name}' keeps its data in an external file, but "
                            "the model's folder is unknown: load the model from its path")
        info = ext_info(t, where)
        ext.append((t, main, resolve_location(folder, info.location, t.name, where, also),
                    info))
    for t, _, path, info in ext:
        if any(d < 0 for d in t.dims):
            raise UserError(f"{where}tensor '{t.name}' declares a negative dimension")
        want = storage_nbytes(t.data_type, numel(t.dims))
        if want is None:
            raise UserError(f"{where}tensor '{t.name}': external data of this type is not "
                            "supported")
        if info.length is not None and info.length != want:
            raise UserError(f"{where}tensor '{t.name}' declares shape {list(t.dims)} ({want} "
                            f"bytes) but its external data length is {info.length}")
        if not os.path.isfile(path):
            raise UserError(f"{where}external data file of tensor '{t.name}' is missing: "
                            f"{info.location}")
        st = os.stat(path)
        if st.st_nlink > 1:
            raise UserError(f"{where}external data file of tensor '{t.name}' ({info.location}) "
                            f"has {st.st_nlink} hard links; refusing to read it (a hard link "
                            "can bring any file of the file system into the model's folder): "
                            "copy it")
        size = st.st_size
        if info.offset + want > size:
            raise UserError(f"{where}tensor '{t.name}' needs bytes {info.offset}..."
                            f"{info.offset + want} of {info.location}, which has only {size}")
    return ext


def open_model(path: str | os.PathLike, lazy: bool = True) -> tuple[onnx.ModelProto,
                                                                    WeightStore | None,
                                                                    list[Path]]:
    """Load and check a model file. With `lazy`, large external tensors of the main graph stay
    on disk and are read through the returned store (None when nothing stayed on disk). Also
    returns the external data files the model reads."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a folder, expected an .onnx file")
    where = f"{p}: "
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise UserError(f"{p}: not a readable ONNX model ({_first_line(e)})") from e
    except Exception as e:  # protobuf raises assorted errors on garbage
        raise UserError(f"{p}: not a readable ONNX model ({_first_line(e)})") from e
    if not model.graph.node:
        raise UserError(f"{p}: the model has no graph nodes")
    folder, also = model_folders(p)
    ext = check_tensor_storage(model, folder, where, also)
    kept = 0
    for t, main, file, info in ext:
        if lazy and main and storage_nbytes(t.data_type, numel(t.dims)) >= LAZY_MIN_BYTES:
            set_external(t, info.location, info.offset,
                         storage_nbytes(t.data_type, numel(t.dims)))
            kept += 1
        else:
            load_inline(t, file, info)
    check_graph_sanity(model, where)
    files = sorted({Path(f) for _, _, f, _ in ext})
    return model, (WeightStore(folder, also) if kept else None), files


def graph_of(model) -> onnx.ModelProto:
    """A ModelProto as it is, or a model file's graph without reading any weight (its inputs,
    nodes and shapes: what feeds and checks need)."""
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(model), load_external_data=False)


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check a model file with all its weights in memory."""
    return open_model(path, lazy=False)[0]


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def data_files(path: str | os.PathLike) -> list[Path]:
    """External data files a model file refers to (that exist inside its folder)."""
    p = Path(path)
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception:
        return []
    out: list[Path] = []
    folder, also = model_folders(p)
    for t, _ in all_tensors(m):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        for e in t.external_data:
            if e.key == "location":
                try:
                    f = Path(resolve_location(folder, e.value, t.name, also=also))
                except UserError:
                    continue
                if f not in out and f.is_file():
                    out.append(f)
    return out


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a model on disk including its external data files."""
    p = Path(path)
    return p.stat().st_size + sum(f.stat().st_size for f in data_files(p))

"""Where weights live: inline bytes, external data files, or arrays a pass rewrote.

Big models keep their weights in external data files. Those are never read at load time: a
`WeightStore` hands out each tensor when a pass asks for it, as an onnx-ir `ExternalTensor`
(memory-mapped, so nothing is copied until it is touched) and nothing keeps it afterwards.
Tensors the rewrite changes are kept as arrays in the store, not inside the ModelProto, so the
proto stays small (no 2 GB protobuf limit, no copy of the weights) at any model size.

Writing a data file (`write_data`) streams into the file object the output writer hands out
(`graphprune.ir.writer.OutputSet.add_data`, which hashes the bytes to name the file): unchanged
tensors are copied chunk-wise from their source, changed ones from their arrays, one tensor at
a time, tensors over 1 MiB at 64 KiB-aligned offsets so ONNX Runtime can map them.

Every `location` is checked (`resolve_location`) before onnx-ir sees it: onnx-ir resolves a
location against a base folder but does not refuse symlinks leading elsewhere.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UserError

TWO_GB = 2 ** 31 - 1
LAZY_MIN_BYTES = 1 << 16  # external tensors smaller than this are read at load time
EXTERNAL_MIN_BYTES = 1024  # tensors at least this big go to the data file when writing one
ALIGN_MIN_BYTES = 1 << 20  # tensors at least this big start at an aligned offset (mmap-able)
ALIGN = 1 << 16

SLOT_KEY = "graphprune_slot"  # marks a tensor whose value is an array held by a WeightStore
KNOWN_KEYS = {"location", "offset", "length", "checksum", "basepath"}
SUBBYTE_BITS = {getattr(TensorProto, n): b for n, b in (
    ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2),
    ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)) if hasattr(TensorProto, n)}


@dataclass
class ExternalInfo:
    location: str
    offset: int
    length: int | None
    slot: str | None


def ext_info(t: TensorProto, where: str = "") -> ExternalInfo:
    kv = {e.key: e.value for e in t.external_data}
    try:
        offset = int(kv.get("offset", "0") or 0)
        length = int(kv["length"]) if kv.get("length", "") != "" else None
    except ValueError:
        raise UserError(f"{where}tensor '{t.name}': external data offset/length are not "
                        "integers") from None
    if offset < 0 or (length is not None and length < 0):
        raise UserError(f"{where}tensor '{t.name}': negative external data offset/length")
    return ExternalInfo(kv.get("location", ""), offset, length, kv.get(SLOT_KEY))


def numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def storage_nbytes(data_type: int, count: int) -> int | None:
    """Bytes a tensor of this type and size occupies in raw/external storage (None: strings)."""
    if data_type in SUBBYTE_BITS:
        return (count * SUBBYTE_BITS[data_type] + 7) // 8
    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        return count * np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except Exception:
        return None


def resolve_location(folder: str, location: str, tensor: str, where: str = "",
                     also: str | None = None) -> str:
    """Absolute real path of an external data file, refused unless it lies inside `folder`
    (the model's folder) or inside `also` (the folder of the model file's real path, when the
    model file is a symlink: a Hugging Face cache keeps `snapshots/REV/model.onnx` and its data
    file as links into `blobs/`, as ONNX Runtime accepts). Nothing is opened."""
    what = f"{where}external data of tensor '{tensor}'"
    if not location or "\x00" in location:
        raise UserError(f"{what} has no valid location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        raise UserError(f"{what} is an absolute path ({location!r}); only files inside the "
                        "model's folder are read")
    if ".." in re.split(r"[\\/]+", location):
        raise UserError(f"{what} points outside the model's folder ({location!r})")
    root = os.path.realpath(folder)
    real = os.path.realpath(os.path.join(root, location))
    roots = [root] + ([os.path.realpath(also)] if also else [])
    if not any(os.path.commonpath([real, r]) == r for r in roots):
        raise UserError(f"{what} resolves outside the model's folder ({location!r} -> {real}); "
                        "refusing to read it")
    return real


def model_folders(path: str | os.PathLike) -> tuple[str, str | None]:
    """The folder external data locations of the model file at `path` are relative to, and the
    folder of its real path when the file is a symlink elsewhere (else None)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    real = os.path.dirname(os.path.realpath(os.fspath(path)))
    return folder, (real if real != os.path.realpath(folder) else None)


def _ir():
    """onnx-ir, imported when a model actually has external data (it costs import time)."""
    import onnx_ir

    return onnx_ir


def external_tensor(t: TensorProto, path: str, offset: int):
    """An onnx-ir tensor reading `t`'s bytes from `path` at `offset` (memory-mapped)."""
    ir = _ir()
    folder, name = os.path.split(path)
    return ir.ExternalTensor(name, offset, storage_nbytes(t.data_type, numel(t.dims)),
                             ir.DataType(t.data_type), shape=ir.Shape(list(t.dims)),
                             name=t.name, base_dir=folder)


class WeightStore:
    """Where the weights of a lazily loaded model live.

    `folder` is the folder external data `location`s are relative to; `arrays` holds the values
    of tensors the rewrite changed (their TensorProto only carries a slot key), so changed weights
    are held once, as numpy arrays, and written straight from there.
    """

    def __init__(self, folder: str | None, also: str | None = None):
        self.folder = folder
        self.also = also  # a second folder data files may resolve into (see resolve_location)
        self.arrays: dict[str, np.ndarray] = {}
        self._next = 0
        self.broken: str | None = None  # why this model can no longer be saved

    def keeps(self, value: np.ndarray) -> bool:
        """Whether a rewritten value should live here rather than inside the proto."""
        return int(np.asarray(value).nbytes) >= LAZY_MIN_BYTES

    def put(self, tensor: TensorProto, value: np.ndarray) -> None:
        """Give `tensor` the value `value` (already of the tensor's dtype) without copying it
        into the proto."""
        slot = str(self._next)
        self._next += 1
        value = np.ascontiguousarray(value)
        self.arrays[slot] = value
        t = TensorProto()
        t.name = tensor.name
        t.data_type = tensor.data_type
        t.doc_string = tensor.doc_string
        t.dims.extend(int(d) for d in value.shape)
        set_external(t, "", 0, storage_nbytes(t.data_type, value.size) or 0, slot=slot)
        tensor.CopyFrom(t)

    def read(self, t: TensorProto) -> np.ndarray:
        info = ext_info(t)
        if info.slot is not None:
            if info.slot not in self.arrays:
                raise UserError(f"tensor '{t.name}': its rewritten value is no longer available")
            return self.arrays[info.slot]
        path = self.path(t, info)
        want = storage_nbytes(t.data_type, numel(t.dims))
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise UserError(f"tensor '{t.name}': cannot read its data file {path}: "
                            f"{e.strerror or e}") from e
        if want is None:
            raise UserError(f"tensor '{t.name}': external data of this type is not supported")
        if info.offset + want > size:
            raise UserError(f"tensor '{t.name}': its data file {path} is shorter than declared")
        return np.asarray(external_tensor(t, path, info.offset).numpy())

    def path(self, t: TensorProto, info: ExternalInfo) -> str:
        if self.folder is None:
            raise UserError(f"tensor '{t.name}' keeps its data in an external file, but the "
                            "model's folder is unknown: load the model from its path")
        return resolve_location(self.folder, info.location, t.name, also=self.also)

    def tensor(self, t: TensorProto):
        """`t` as an onnx-ir tensor for the data-file writer (no bytes read yet)."""
        info = ext_info(t)
        if info.slot is not None:
            ir = _ir()
            return ir.Tensor(self.read(t), dtype=ir.DataType(t.data_type), name=t.name)
        return external_tensor(t, self.path(t, info), info.offset)

    def materialize(self, model: onnx.ModelProto) -> None:
        """Read every weight of `model` that is still on disk into the proto."""
        for t in model.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                info = ext_info(t)
                if info.slot is not None:
                    t.CopyFrom(numpy_helper.from_array(self.arrays.pop(info.slot), t.name))
                else:
                    load_inline(t, self.path(t, info), info)

    def source_files(self, model: onnx.ModelProto) -> set[str]:
        """Real paths of the data files the model's external tensors read."""
        out = set()
        for t in model.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                info = ext_info(t)
                if info.slot is None and self.folder is not None:
                    out.add(self.path(t, info))
        return out

    def rebase(self, model: onnx.ModelProto, folder: str, location: str,
               placed: dict[str, tuple[int, int]]) -> None:
        """After a write: every external tensor of `model` now reads from the written data file
        (`location` in `folder`), and the arrays held for rewritten tensors are released."""
        for t in model.graph.initializer:
            if t.name in placed and t.data_location == TensorProto.EXTERNAL:
                off, n = placed[t.name]
                set_external(t, location, off, n)
        self.arrays.clear()
        self.folder, self.also = folder, None


def read_external_tensor(t: TensorProto, store: WeightStore | None) -> np.ndarray:
    """Value of an initializer whose data is external (a data file or a store array)."""
    if store is None:
        raise UserError(f"tensor '{t.name}' keeps its data in an external file, but the model's "
                        "folder is unknown: load the model from its path")
    return store.read(t)


def load_inline(t: TensorProto, path: str, info: ExternalInfo) -> None:
    """Read an external tensor's bytes into the proto (small tensors, in-memory models)."""
    nbytes = storage_nbytes(t.data_type, numel(t.dims))
    with open(path, "rb") as f:
        f.seek(info.offset)
        raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise UserError(f"tensor '{t.name}': its data file {path} is shorter than declared")
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT
    t.raw_data = raw


def set_external(t: TensorProto, location: str, offset: int, length: int,
                 slot: str | None = None) -> None:
    t.ClearField("raw_data")
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    items = [("location", location), ("offset", str(offset)), ("length", str(length))]
    if slot is not None:
        items.append((SLOT_KEY, slot))
    for k, v in items:
        e = t.external_data.add()
        e.key, e.value = k, v


def has_external_tensors(model: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def goes_external(t: TensorProto) -> bool:
    """Whether an initializer is written to the data file when the model has one."""
    return t.data_location == TensorProto.EXTERNAL or (
        t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN_BYTES)


def write_data(model: onnx.ModelProto, store: WeightStore | None,
               sink) -> dict[str, tuple[int, int]]:
    """Stream the bytes of every initializer that `goes_external` into `sink` (a binary file
    object with `write` and `tell`, e.g. the one `OutputSet.add_data` hands out): in graph
    order, packed, tensors of 1 MiB or more at 64 KiB-aligned offsets (ONNX Runtime maps
    them). Unchanged tensors are copied chunk-wise from their source data file, changed ones
    written from the store's arrays, one tensor at a time. Returns name -> (offset, length);
    the proto is not changed."""
    placed: dict[str, tuple[int, int]] = {}
    pos = 0
    for t in model.graph.initializer:
        if not goes_external(t):
            continue
        tensor = None
        if t.data_location == TensorProto.EXTERNAL:
            if store is None:
                raise UserError(f"tensor '{t.name}' keeps its data in an external file, but "
                                "the model's folder is unknown: load the model from its path")
            tensor = store.tensor(t)
            n = int(tensor.nbytes)
        else:
            n = len(t.raw_data)
        if n >= ALIGN_MIN_BYTES and pos % ALIGN:
            pad = -pos % ALIGN
            sink.write(bytes(pad))
            pos += pad
        if tensor is None:
            sink.write(t.raw_data)
        else:
            tensor.tofile(sink)  # external: chunks of the source file; changed: its array
        if sink.tell() != pos + n:
            raise UserError(f"tensor '{t.name}': {sink.tell() - pos} bytes written for "
                            f"{n} declared (its data file changed while it was read?)")
        placed[t.name] = (pos, n)
        pos += n
    return placed


# ====================================================================== every tensor
def _graph_tensors(g: onnx.GraphProto, main: bool) -> Iterator[tuple[TensorProto, bool]]:
    for t in g.initializer:
        yield t, main
    for s in g.sparse_initializer:
        yield s.values, False
        yield s.indices, False
    for n in g.node:
        yield from _node_tensors(n)


def _node_tensors(n: onnx.NodeProto) -> Iterator[tuple[TensorProto, bool]]:
    for a in n.attribute:
        if a.HasField("t"):
            yield a.t, False
        for t in a.tensors:
            yield t, False
        if a.HasField("g"):
            yield from _graph_tensors(a.g, False)
        for sub in a.graphs:
            yield from _graph_tensors(sub, False)


def all_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, bool]]:
    """Every TensorProto of a model (with whether it is a main-graph initializer)."""
    yield from _graph_tensors(model.graph, True)
    for fn in model.functions:
        for n in fn.node:
            yield from _node_tensors(n)


def copy_fields(dst, src, skip: str) -> None:
    """Copy every set field of message `src` into `dst` except the field named `skip`."""
    for fd, val in src.ListFields():
        if fd.name == skip:
            continue
        if getattr(fd, "is_repeated", None) or getattr(fd, "label", None) == 3:
            getattr(dst, fd.name).extend(val)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(val)
        else:
            setattr(dst, fd.name, val)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes the main graph's initializers hold, wherever they are stored."""
    return sum(storage_nbytes(t.data_type, numel(t.dims)) or 0 for t in model.graph.initializer)


def approx_bytes(model: onnx.ModelProto) -> int:
    """The serialized size of a model, estimated without serializing it (`ByteSize()` costs as
    much as writing the file): everything but the initializers exactly, plus each initializer's
    payload and a little framing. Used for size decisions (2 GB limits) and the report before a
    model is written; a written file reports its real size."""
    skeleton = onnx.ModelProto()
    copy_fields(skeleton, model, skip="graph")
    copy_fields(skeleton.graph, model.graph, skip="initializer")
    payload = 0
    for t in model.graph.initializer:
        if t.HasField("raw_data"):
            data = len(t.raw_data)
        elif t.data_location == TensorProto.EXTERNAL:  # what the data file holds for it
            data = storage_nbytes(t.data_type, numel(t.dims)) or 0
        else:
            data = 8 * numel(t.dims)
        payload += data + len(t.name) + 10 * len(t.dims) + 24 + sum(
            len(e.key) + len(e.value) + 4 for e in t.external_data)
    return skeleton.ByteSize() + payload

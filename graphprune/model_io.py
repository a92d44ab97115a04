"""Reading and writing models: safe loading, lazily read weights, sanity checks, atomic writes.

Loading never trusts the file. Before any data is read:

* every external-data `location` must stay inside the model's folder (no absolute path, no `..`,
  no symlink leading out), checked for every tensor before any data file is opened;
* every tensor's declared shape must match the bytes it stores, inline or in its data file, so a
  tensor declaring 10^12 elements is refused before anything is allocated;
* the graph must be well formed (`check_graph_sanity`): every name read is produced, nothing is
  produced twice, no cycle, every op's domain is imported, graph inputs have sane sizes, and the
  ONNX checker accepts it. Anything else fails later with an unreadable message, or not at all.

Big models. Weights kept in external data files are not read at load time: a `WeightStore` reads
each tensor when a pass asks for it (`GraphView.const_value`) and nothing keeps it afterwards.
Tensors the rewrite changes are kept as arrays in the store, not inside the ModelProto, so the
proto stays small (no 2 GB protobuf limit, no copy of the weights) at any model size.

Writing is atomic: everything goes to temporary files in the target folder, is fsynced, checked
when a check is asked for, and only then renamed over the target. External data is streamed
tensor by tensor: unchanged tensors are copied chunk-wise from the source data file, changed ones
written from their arrays. An interrupted or failed write leaves the target as it was.
"""
from __future__ import annotations

import heapq
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from .errors import UserError
from .ir import shapes_from_model, subgraph_outer_names

TWO_GB = 2 ** 31 - 1
MAX_DIM = 2 ** 31 - 1  # largest size accepted on any declared axis
MAX_INPUT_BYTES = 1 << 30  # largest graph input (symbolic sizes as 1): validation allocates it
MAX_FILL_ELEMENTS = 1 << 31  # largest ConstantOfShape with a constant shape
LAZY_MIN_BYTES = 1 << 16  # external tensors smaller than this are read at load time
EXTERNAL_MIN_BYTES = 1024  # tensors at least this big go to the data file when writing one
ALIGN_MIN_BYTES = 1 << 20  # tensors at least this big start at an aligned offset (mmap-able)
ALIGN = 1 << 16
CHUNK = 16 << 20  # bytes per read when copying unchanged tensors
SHAPE_INFERENCE_MAX_ELEMENTS = 4096  # initializers kept as values when inferring shapes

SLOT_KEY = "graphprune_slot"  # marks a tensor whose value is an array held by a WeightStore
_KNOWN_KEYS = {"location", "offset", "length", "checksum", "basepath"}
_BITS = {getattr(TensorProto, n): b for n, b in (
    ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2),
    ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6)) if hasattr(TensorProto, n)}
_PLAIN = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8,
          TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
          TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL,
          TensorProto.COMPLEX64, TensorProto.COMPLEX128}


# ====================================================================== external data
@dataclass
class ExternalInfo:
    location: str
    offset: int
    length: int | None
    slot: str | None


def _ext_info(t: TensorProto, where: str = "") -> ExternalInfo:
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


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def storage_nbytes(data_type: int, numel: int) -> int | None:
    """Bytes a tensor of this type and size occupies in raw/external storage (None: strings)."""
    if data_type in _BITS:
        return (numel * _BITS[data_type] + 7) // 8
    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        return numel * np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except Exception:
        return None


def resolve_location(folder: str, location: str, tensor: str, where: str = "") -> str:
    """Absolute path of an external data file, refused unless it lies inside `folder`."""
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
    if os.path.commonpath([real, root]) != root:
        raise UserError(f"{what} resolves outside the model's folder ({location!r} -> {real}); "
                        "refusing to read it")
    return real


class WeightStore:
    """Where the weights of a lazily loaded model live.

    `folder` is the folder external data `location`s are relative to; `arrays` holds the values
    of tensors the rewrite changed (their TensorProto only carries a slot key), so changed weights
    are held once, as numpy arrays, and written straight from there.
    """

    def __init__(self, folder: str | None):
        self.folder = folder
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
        _set_external(t, "", 0, storage_nbytes(t.data_type, value.size) or 0, slot=slot)
        tensor.CopyFrom(t)

    def read(self, t: TensorProto) -> np.ndarray:
        info = _ext_info(t)
        if info.slot is not None:
            if info.slot not in self.arrays:
                raise UserError(f"tensor '{t.name}': its rewritten value is no longer available")
            return self.arrays[info.slot]
        return _read_array(self._path(t, info), t, info)

    def _path(self, t: TensorProto, info: ExternalInfo) -> str:
        if self.folder is None:
            raise UserError(f"tensor '{t.name}' keeps its data in an external file, but the "
                            "model's folder is unknown: load the model from its path")
        return resolve_location(self.folder, info.location, t.name)

    def materialize(self, model: onnx.ModelProto) -> None:
        """Read every weight of `model` that is still on disk into the proto."""
        for t in model.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                info = _ext_info(t)
                if info.slot is not None:
                    t.CopyFrom(numpy_helper.from_array(self.arrays.pop(info.slot), t.name))
                else:
                    _load_inline(t, self._path(t, info), info)

    def source_files(self, model: onnx.ModelProto) -> set[str]:
        """Real paths of the data files the model's external tensors read."""
        out = set()
        for t in model.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                info = _ext_info(t)
                if info.slot is None and self.folder is not None:
                    out.add(self._path(t, info))
        return out

    def write_to(self, t: TensorProto, f) -> int:
        """Append the bytes of external tensor `t` to file `f`; returns the count."""
        info = _ext_info(t)
        if info.slot is not None:
            return _write_array(f, self.read(t), t)
        path = self._path(t, info)
        nbytes = storage_nbytes(t.data_type, _numel(t.dims))
        if nbytes is None:
            raise UserError(f"tensor '{t.name}': cannot store this type externally")
        buf = bytearray(min(CHUNK, max(nbytes, 1)))
        view = memoryview(buf)
        with open(path, "rb") as src:
            src.seek(info.offset)
            left = nbytes
            while left:
                n = src.readinto(view[:min(left, len(buf))])
                if not n:
                    raise UserError(f"tensor '{t.name}': its data file {path} is shorter than "
                                    "declared (changed while running?)")
                f.write(view[:n])
                left -= n
        return nbytes

    def rebase(self, model: onnx.ModelProto, folder: str, location: str,
               placed: dict[str, tuple[int, int]]) -> None:
        """After a write: every external tensor of `model` now reads from the written data file
        (`location` in `folder`), and the arrays held for rewritten tensors are released."""
        for t in model.graph.initializer:
            if t.name in placed and t.data_location == TensorProto.EXTERNAL:
                off, n = placed[t.name]
                _set_external(t, location, off, n)
        self.arrays.clear()
        self.folder = folder

    def relocate(self, model: onnx.ModelProto, old: str, new: str) -> None:
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location" and e.value == old:
                    e.value = new


def read_external_tensor(t: TensorProto, store: WeightStore | None) -> np.ndarray:
    """Value of an initializer whose data is external (a data file or a store array)."""
    if store is None:
        raise UserError(f"tensor '{t.name}' keeps its data in an external file, but the model's "
                        "folder is unknown: load the model from its path")
    return store.read(t)


def _read_array(path: str, t: TensorProto, info: ExternalInfo) -> np.ndarray:
    numel = _numel(t.dims)
    nbytes = storage_nbytes(t.data_type, numel)
    if nbytes is None:
        raise UserError(f"tensor '{t.name}': external data of this type is not supported")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise UserError(f"tensor '{t.name}': cannot read its data file {path}: "
                        f"{e.strerror or e}") from e
    if info.offset + nbytes > size:
        raise UserError(f"tensor '{t.name}': its data file {path} is shorter than declared")
    if t.data_type in _PLAIN:
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")
        arr = np.fromfile(path, dtype=dt, count=numel, offset=info.offset)
        if arr.size != numel:
            raise UserError(f"tensor '{t.name}': its data file {path} is shorter than declared")
        arr = arr.reshape(tuple(int(d) for d in t.dims))
        return arr if dt.isnative else arr.astype(dt.newbyteorder("="))
    with open(path, "rb") as f:
        f.seek(info.offset)
        raw = f.read(nbytes)
    tmp = TensorProto()
    tmp.name = t.name
    tmp.data_type = t.data_type
    tmp.dims.extend(t.dims)
    tmp.raw_data = raw
    return numpy_helper.to_array(tmp)


def _write_array(f, arr: np.ndarray, t: TensorProto) -> int:
    if t.data_type in _PLAIN:
        a = np.ascontiguousarray(arr)
        if not a.dtype.isnative or a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        data = memoryview(a.reshape(-1).view(np.uint8))
    else:  # sub-byte and ml_dtypes types: let onnx pack them
        data = numpy_helper.from_array(np.asarray(arr), t.name).raw_data
    f.write(data)
    return len(data)


def _set_external(t: TensorProto, location: str, offset: int, length: int,
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


# ====================================================================== loading
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


def _check_payload(t: TensorProto, where: str) -> None:
    """The bytes an inline tensor stores match its declared shape."""
    if any(d < 0 for d in t.dims):
        raise UserError(f"{where}tensor '{t.name}' declares a negative dimension {list(t.dims)}")
    numel = _numel(t.dims)
    dt = t.data_type
    if t.HasField("raw_data"):
        want = storage_nbytes(dt, numel)
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
    if dt in _BITS:
        ok = len(t.int32_data) == (numel * _BITS[dt] + 7) // 8
    elif stored is None:  # int32_data holds one element each for the remaining types
        ok = len(t.int32_data) == numel
    else:
        ok = stored == numel
    if not ok:
        raise UserError(f"{where}tensor '{t.name}' declares shape {list(t.dims)} ({numel} "
                        "elements) but stores a different number of values")


def check_tensor_storage(model: onnx.ModelProto, folder: str | None,
                         where: str = "") -> list[tuple[TensorProto, bool, str, ExternalInfo]]:
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
        unknown = sorted({e.key for e in t.external_data} - _KNOWN_KEYS)
        if unknown:
            raise UserError(f"{where}tensor '{t.name}': unknown external data key(s) {unknown}")
        if t.HasField("raw_data"):
            raise UserError(f"{where}tensor '{t.name}' is marked external but also stores data")
        if folder is None:
            raise UserError(f"{where}tensor '{t.name}' keeps its data in an external file, but "
                            "the model's folder is unknown: load the model from its path")
        info = _ext_info(t, where)
        ext.append((t, main, resolve_location(folder, info.location, t.name, where), info))
    for t, _, path, info in ext:
        if any(d < 0 for d in t.dims):
            raise UserError(f"{where}tensor '{t.name}' declares a negative dimension")
        want = storage_nbytes(t.data_type, _numel(t.dims))
        if want is None:
            raise UserError(f"{where}tensor '{t.name}': external data of this type is not "
                            "supported")
        if info.length is not None and info.length != want:
            raise UserError(f"{where}tensor '{t.name}' declares shape {list(t.dims)} ({want} "
                            f"bytes) but its external data length is {info.length}")
        if not os.path.isfile(path):
            raise UserError(f"{where}external data file of tensor '{t.name}' is missing: "
                            f"{info.location}")
        size = os.path.getsize(path)
        if info.offset + want > size:
            raise UserError(f"{where}tensor '{t.name}' needs bytes {info.offset}..."
                            f"{info.offset + want} of {info.location}, which has only {size}")
    return ext


def _load_inline(t: TensorProto, path: str, info: ExternalInfo) -> None:
    nbytes = storage_nbytes(t.data_type, _numel(t.dims))
    with open(path, "rb") as f:
        f.seek(info.offset)
        raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise UserError(f"tensor '{t.name}': its data file {path} is shorter than declared")
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT
    t.raw_data = raw


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
    folder = os.path.dirname(os.path.abspath(str(p)))
    ext = check_tensor_storage(model, folder, where)
    kept = 0
    for t, main, file, info in ext:
        if lazy and main and storage_nbytes(t.data_type, _numel(t.dims)) >= LAZY_MIN_BYTES:
            _set_external(t, info.location, info.offset,
                          storage_nbytes(t.data_type, _numel(t.dims)))
            kept += 1
        else:
            _load_inline(t, file, info)
    check_graph_sanity(model, where)
    files = sorted({Path(f) for _, _, f, _ in ext})
    return model, (WeightStore(folder) if kept else None), files


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check a model file with all its weights in memory."""
    return open_model(path, lazy=False)[0]


# ====================================================================== graph sanity
def check_graph_sanity(model: onnx.ModelProto, where: str = "") -> None:
    """Refuse graphs no tool can handle, with a message saying what is wrong.

    Puts the nodes of an acyclic but unsorted graph in topological order (ONNX requires it and
    every pass relies on it). Everything else is refused with a `UserError`.
    """
    g = model.graph
    _check_text(model, where)
    if not g.output:
        raise UserError(f"{where}the graph has no outputs")
    domains = {o.domain or "ai.onnx" for o in model.opset_import}
    local = {f.domain or "ai.onnx" for f in model.functions}
    for node in _all_nodes(g):
        d = node.domain or "ai.onnx"
        if d not in domains and d not in local:
            raise UserError(f"{where}node '{node.name or node.op_type}' ({node.op_type}) uses "
                            f"domain '{d}', which the model does not import (no opset_import "
                            "entry)")
    _check_scope(g, set(), where)
    _toposort(g, where)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        _check_dims(vi, where)
    inits = {t.name for t in g.initializer}
    for vi in g.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        n = _numel(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
        nbytes = n * (storage_nbytes(tt.elem_type, 1) or 1)
        if nbytes > MAX_INPUT_BYTES:
            raise UserError(f"{where}graph input '{vi.name}' declares {n:,} elements "
                            f"({nbytes:,} bytes); refusing inputs over {MAX_INPUT_BYTES:,} bytes")
    _check_fills(g, where)
    copy = inference_copy(model)
    mask_unregistered_ops(copy)
    try:
        onnx.checker.check_model(copy)
    except Exception as e:
        raise UserError(f"{where}not a valid ONNX model: {_first_line(e)}") from e


UNCHECKED_DOMAIN = "graphprune.unchecked"


def has_unregistered_ops(model: onnx.ModelProto) -> bool:
    """Whether the default domain holds ops ONNX has no schema for (ONNX Runtime registers
    some of its own there, e.g. SimplifiedLayerNormalization)."""
    return any(n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, "")
               for n in _all_nodes(model.graph))


def mask_unregistered_ops(model: onnx.ModelProto) -> None:
    """Move default-domain ops without an ONNX schema to a private domain, in place, so the
    ONNX checker checks everything else instead of stopping at them (ONNX Runtime, which runs
    every model graphprune writes, is the judge of those ops)."""
    changed = False
    for n in _all_nodes(model.graph):
        if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type, ""):
            n.domain = UNCHECKED_DOMAIN
            changed = True
    if changed and not any(o.domain == UNCHECKED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(UNCHECKED_DOMAIN, 1))


def _check_text(model: onnx.ModelProto, where: str) -> None:
    """Names, op types and domains must be text: protobuf hands back invalid UTF-8 as bytes,
    which no later step expects."""
    def bad(*values) -> bool:
        return any(isinstance(v, bytes) for v in values)

    def graph(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if bad(vi.name) or (vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField(
                    "shape") and bad(*(d.dim_param for d in vi.type.tensor_type.shape.dim))):
                raise UserError(f"{where}a graph value name is not valid UTF-8 text")
        for t in g.initializer:
            if bad(t.name):
                raise UserError(f"{where}an initializer name is not valid UTF-8 text")
        for n in g.node:
            if bad(n.op_type, n.domain, n.name, *n.input, *n.output,
                   *(a.name for a in n.attribute)):
                raise UserError(f"{where}a node's name, op type, domain or tensor name is not "
                                "valid UTF-8 text")
            for a in n.attribute:
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)

    if bad(*(o.domain for o in model.opset_import), *(f.name for f in model.functions),
           *(f.domain for f in model.functions)):
        raise UserError(f"{where}an opset or function name is not valid UTF-8 text")
    graph(model.graph)


def _all_nodes(g: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.HasField("g"):
                yield from _all_nodes(a.g)
            for sub in a.graphs:
                yield from _all_nodes(sub)


def _check_scope(g: onnx.GraphProto, outer: set[str], where: str) -> None:
    """Every name read is defined exactly once, in this graph or an enclosing one."""
    defined: set[str] = set()
    for name in [i.name for i in g.input] + [t.name for t in g.initializer] + \
            [s.values.name for s in g.sparse_initializer]:
        defined.add(name)
    for n in g.node:
        for o in n.output:
            if not o:
                continue
            if o in defined:
                raise UserError(f"{where}tensor '{o}' is defined more than once (again by "
                                f"node '{n.name or n.op_type}')")
            defined.add(o)
    visible = defined | outer
    for n in g.node:
        for i in n.input:
            if i and i not in visible:
                raise UserError(f"{where}node '{n.name or n.op_type}' ({n.op_type}) reads "
                                f"'{i}', which no node, initializer or graph input produces")
        for a in n.attribute:
            subs = ([a.g] if a.HasField("g") else []) + list(a.graphs)
            for sub in subs:
                _check_scope(sub, visible, where)
    for o in g.output:
        if o.name not in visible:
            raise UserError(f"{where}graph output '{o.name}' is produced by nothing")


def _toposort(g: onnx.GraphProto, where: str) -> None:
    nodes = list(g.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps: list[set[int]] = []
    unsorted = False
    for k, n in enumerate(nodes):
        names = {i for i in n.input if i} | subgraph_outer_names(n)
        d = {producer[i] for i in names if i in producer}
        if k in d:
            raise UserError(f"{where}the graph has a cycle: node '{n.name or n.op_type}' reads "
                            "its own output")
        unsorted |= any(j > k for j in d)
        deps.append(d)
    if not unsorted:
        return
    users: list[list[int]] = [[] for _ in nodes]
    missing = [len(d) for d in deps]
    for k, d in enumerate(deps):
        for j in d:
            users[j].append(k)
    ready = [k for k, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users[k]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        stuck = next(k for k, m in enumerate(missing) if m)
        n = nodes[stuck]
        raise UserError(f"{where}the graph has a cycle through node '{n.name or n.op_type}' "
                        f"({n.op_type})")
    copies = [onnx.NodeProto() for _ in nodes]
    for c, n in zip(copies, nodes):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies[k] for k in order)


def _check_dims(vi: onnx.ValueInfoProto, where: str) -> None:
    """Refuse absurd declared sizes. A negative size (some converters write -1 for "unknown",
    which ONNX Runtime reads as symbolic) becomes an unknown dimension."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value < 0:
            d.Clear()
        elif d.HasField("dim_value") and d.dim_value > MAX_DIM:
            raise UserError(f"{where}'{vi.name}' declares a dimension of {d.dim_value:,}; "
                            f"sizes must be in [0, {MAX_DIM:,}]")


def _check_fills(g: onnx.GraphProto, where: str) -> None:
    """ConstantOfShape with a constant shape: refuse absurd sizes before anything fills them."""
    small = {t.name: t for t in g.initializer if t.data_location != TensorProto.EXTERNAL}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    small[n.output[0]] = a.t
    for n in g.node:
        if n.op_type != "ConstantOfShape" or not n.input or n.input[0] not in small:
            continue
        try:
            shape = numpy_helper.to_array(small[n.input[0]]).reshape(-1)
        except Exception:
            continue
        if len(shape) > 64 or _numel(int(s) for s in shape) > MAX_FILL_ELEMENTS or \
                any(int(s) < 0 for s in shape):
            raise UserError(f"{where}ConstantOfShape '{n.name or n.output[0]}' fills a tensor of "
                            f"shape {shape.tolist()}; refusing sizes over {MAX_FILL_ELEMENTS:,}")


# ====================================================================== shapes
def inference_copy(model: onnx.ModelProto,
                   max_elements: int = SHAPE_INFERENCE_MAX_ELEMENTS) -> onnx.ModelProto:
    """The model without its weight bytes: initializers over `max_elements` elements (and all
    external ones) become typed graph inputs. Shape inference and the checker need their types
    and shapes, never their values, and the copy costs nothing at any model size."""
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g, src = m.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    listed = {i.name for i in src.input}
    for t in src.initializer:
        if t.data_location != TensorProto.EXTERNAL and _numel(t.dims) <= max_elements:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for s in src.sparse_initializer:
        if s.values.name not in listed:
            g.input.append(helper.make_tensor_value_info(s.values.name, s.values.data_type,
                                                         list(s.dims)))
    return m


def infer_shapes(model: onnx.ModelProto) -> dict:
    """Static shapes of all values, from ONNX shape inference with data propagation.

    Runs on a copy without weight bytes, so the user's model keeps exactly the value_info it came
    with and big models cost no copy.
    """
    copy = inference_copy(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:
        try:
            inferred = onnx.shape_inference.infer_shapes(copy)
        except Exception:
            inferred = copy
    return shapes_from_model(inferred)


# ====================================================================== writing
def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def _temp_in(folder: Path, name: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file should look normal
    return tmp


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _copy_fields(dst, src, skip: str) -> None:
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


def _write_external(model: onnx.ModelProto, store: WeightStore | None, f,
                    location: str) -> tuple[onnx.ModelProto, dict[str, tuple[int, int]]]:
    """Stream the main graph's tensors into data file `f`; returns the model proto that
    references them under `location` and where each tensor was placed.

    The returned proto never holds the bytes written to the file (not even for a moment), so
    writing costs no copy of the weights for in-memory models either."""
    out = onnx.ModelProto()
    _copy_fields(out, model, skip="graph")
    _copy_fields(out.graph, model.graph, skip="initializer")
    placed: dict[str, tuple[int, int]] = {}
    pos = 0
    for src in model.graph.initializer:
        t = out.graph.initializer.add()
        external = src.data_location == TensorProto.EXTERNAL
        raw = src.HasField("raw_data") and len(src.raw_data) >= EXTERNAL_MIN_BYTES
        if not external and not raw:
            t.CopyFrom(src)
            continue
        _copy_fields(t, src, skip="raw_data")
        size = storage_nbytes(src.data_type, _numel(src.dims)) or len(src.raw_data)
        if size >= ALIGN_MIN_BYTES and pos % ALIGN:
            pad = ALIGN - pos % ALIGN
            f.write(b"\0" * pad)
            pos += pad
        if external:
            if store is None:
                raise UserError(f"tensor '{src.name}' keeps its data in an external file, but "
                                "the model's folder is unknown: load the model from its path")
            n = store.write_to(src, f)
        else:
            f.write(src.raw_data)
            n = len(src.raw_data)
        _set_external(t, location, pos, n)
        placed[t.name] = (pos, n)
        pos += n
    if out.ByteSize() > TWO_GB:
        raise UserError("the model is larger than 2 GB even with its initializers in the data "
                        "file (large constants inside nodes or subgraphs)")
    return out, placed


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool = False,
               store: WeightStore | None = None,
               validate: Callable[[str], None] | None = None) -> int:
    """Write atomically: temporary files in the target folder, fsync, `validate(temp_path)` if
    given, then rename over the target. Returns bytes written (model + data file).

    External data (`<name>.data` beside the model, streamed tensor by tensor) is used on
    request, when the model's weights are on disk (a lazily loaded model) and when the model
    would not fit one protobuf (> 2 GB). After such a write `model` and `store` refer to the
    written data file, and the store's in-memory arrays are released.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{folder}: output folder does not exist")
    if store is not None and store.broken:
        raise UserError(store.broken)
    lazy = has_external_tensors(model)
    if lazy or (not external_data and model.ByteSize() > TWO_GB):
        external_data = True
    data_name = p.name + ".data"
    if lazy and store is not None:
        target = os.path.realpath(folder / data_name)
        if target in store.source_files(model):
            raise UserError(f"{folder / data_name} is the data file the model is read from; "
                            "choose another output name")
    made: list[str] = []
    rebased = False
    try:
        tmp_model = _temp_in(folder, p.name)
        made.append(tmp_model)
        if external_data:
            tmp_data = _temp_in(folder, data_name)
            made.append(tmp_data)
            tmp_loc = os.path.basename(tmp_data)
            with open(tmp_data, "wb") as f:
                out, placed = _write_external(model, store, f, tmp_loc)
                f.flush()
                os.fsync(f.fileno())
            _write_bytes(tmp_model, out.SerializeToString())
            if store is not None:  # release the arrays before validation loads the model
                store.rebase(model, os.path.abspath(folder), tmp_loc, placed)
                rebased = True
            if validate:
                validate(tmp_model)
            for t in out.graph.initializer:
                for e in t.external_data:
                    if e.key == "location" and e.value == tmp_loc:
                        e.value = data_name
            _write_bytes(tmp_model, out.SerializeToString())
            os.replace(tmp_data, folder / data_name)
            made.remove(tmp_data)
            if store is not None:
                store.relocate(model, tmp_loc, data_name)
        else:
            _write_bytes(tmp_model, model.SerializeToString())
            if validate:
                validate(tmp_model)
        os.replace(tmp_model, p)
        made.remove(tmp_model)
        _fsync_folder(folder)
    except BaseException as e:
        for t in made:
            try:
                os.unlink(t)
            except OSError:
                pass
        if rebased and made:
            store.broken = "this pruned model could not be saved and its data is gone; prune again"
        if isinstance(e, OSError):
            raise UserError(f"cannot write {p}: {e.strerror or e}") from e
        raise
    size = p.stat().st_size
    if external_data:
        size += (folder / data_name).stat().st_size
    return size


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (reports): temp file in the same folder, then rename."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{folder}: folder does not exist")
    tmp = None
    try:
        tmp = _temp_in(folder, p.name)
        _write_bytes(tmp, text.encode())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror or e}") from e
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


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
    for t, _ in all_tensors(m):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        for e in t.external_data:
            if e.key == "location":
                try:
                    f = Path(resolve_location(str(p.parent), e.value, t.name))
                except UserError:
                    continue
                if f not in out and f.is_file():
                    out.append(f)
    return out


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (through symlinks, hard links, relative paths)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(source: str | os.PathLike | None, out: str | os.PathLike,
                  others: tuple = ()) -> None:
    """Refuse, before any work, outputs that would overwrite the input (the model or one of its
    data files) or each other, or that cannot be written (missing or read-only folder)."""
    out = Path(out)
    src = Path(source) if source else None
    own = [out, out.with_name(out.name + ".data")]
    protected = [src] if src is not None and src.is_file() else []
    if protected and any(Path(t).exists() for t in own + list(others)):
        protected += data_files(src)  # only an existing file can be one of the input's
    if src is not None and same_file(out, src):
        raise UserError("output path equals the input; choose another -o")
    for t in own + [Path(o) for o in others]:
        for f in protected:
            if same_file(t, f):
                raise UserError(f"{t} would overwrite the input {f}; choose another path")
    for o in others:
        if any(same_file(o, t) for t in own):
            raise UserError(f"{o} would overwrite the output model; choose another path")
    for t in [out] + [Path(o) for o in others]:
        folder = t.parent if str(t.parent) else Path(".")
        if t.is_dir():
            raise UserError(f"{t}: is a folder")
        if not folder.is_dir():
            raise UserError(f"{folder}: output folder does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"{folder}: output folder is not writable")


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a model on disk including its external data files."""
    p = Path(path)
    return p.stat().st_size + sum(f.stat().st_size for f in data_files(p))

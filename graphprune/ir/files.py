"""Writing models and reports atomically, and refusing outputs that would destroy the input.

Everything goes to temporary files in the target folder, is fsynced, checked when a check is
asked for, and only then renamed over the target. External data (`OUT.data` beside the model)
is written by `graphprune.ir.storage.write_data_file`. An interrupted or failed write leaves the
target as it was.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import onnx

from ..errors import UserError
from .load import data_files
from .storage import (TWO_GB, WeightStore, approx_bytes, copy_fields, goes_external,
                      has_external_tensors, set_external)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def temp_in(folder: Path, name: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file should look normal
    return tmp


def fsync_folder(folder: Path) -> None:
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


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def external_proto(model: onnx.ModelProto, location: str,
                   placed: dict[str, tuple[int, int]]) -> onnx.ModelProto:
    """The model proto whose written initializers reference `location` (never holding their
    bytes, not even for a moment, so writing costs no copy of the weights)."""
    out = onnx.ModelProto()
    copy_fields(out, model, skip="graph")
    copy_fields(out.graph, model.graph, skip="initializer")
    for src in model.graph.initializer:
        t = out.graph.initializer.add()
        if src.name not in placed or not goes_external(src):
            t.CopyFrom(src)
            continue
        copy_fields(t, src, skip="raw_data")
        off, n = placed[src.name]
        set_external(t, location, off, n)
    if out.ByteSize() > TWO_GB:
        raise UserError("the model is larger than 2 GB even with its initializers in the data "
                        "file (large constants inside nodes or subgraphs)")
    return out


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool = False,
               store: WeightStore | None = None,
               validate: Callable[[str], None] | None = None, rebase: bool = True) -> int:
    """Write atomically: temporary files in the target folder, fsync, `validate(temp_path)` if
    given, then rename over the target. Returns bytes written (model + data file).

    External data (`<name>.data` beside the model) is used on request, when the model's weights
    are on disk (a lazily loaded model) and when the model would not fit one protobuf (> 2 GB).
    After such a write `model` and `store` refer to the written data file, and the store's
    in-memory arrays are released (unless `rebase` is off: a copy written for a measurement).
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{folder}: output folder does not exist")
    if store is not None and store.broken:
        raise UserError(store.broken)
    lazy = has_external_tensors(model)
    if lazy or (not external_data and approx_bytes(model) > TWO_GB):
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
        tmp_model = temp_in(folder, p.name)
        made.append(tmp_model)
        if external_data:
            from .storage import write_data_file

            tmp_data = temp_in(folder, data_name)
            made.append(tmp_data)
            tmp_loc = os.path.basename(tmp_data)
            placed = write_data_file(model, store, str(folder), tmp_loc)
            fsync_file(tmp_data)
            out = external_proto(model, tmp_loc, placed)
            write_bytes(tmp_model, out.SerializeToString())
            if store is not None and rebase:  # release the arrays before validation runs
                store.rebase(model, os.path.abspath(folder), tmp_loc, placed)
                rebased = True
            if validate:
                validate(tmp_model)
            for t in out.graph.initializer:
                for e in t.external_data:
                    if e.key == "location" and e.value == tmp_loc:
                        e.value = data_name
            write_bytes(tmp_model, out.SerializeToString())
            os.replace(tmp_data, folder / data_name)
            made.remove(tmp_data)
            if rebased:
                store.relocate(model, tmp_loc, data_name)
        else:
            write_bytes(tmp_model, model.SerializeToString())
            if validate:
                validate(tmp_model)
        os.replace(tmp_model, p)
        made.remove(tmp_model)
        fsync_folder(folder)
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
        tmp = temp_in(folder, p.name)
        write_bytes(tmp, text.encode())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror or e}") from e
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (through symlinks, hard links, relative paths)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(source: str | os.PathLike | None, out: str | os.PathLike,
                  others: tuple = (), source_files: list | None = None) -> None:
    """Refuse, before any work, outputs that would overwrite the input (the model or one of its
    data files) or each other, or that cannot be written (missing or read-only folder).
    `source_files`: the input's data files when the caller knows them (else they are read
    from the input)."""
    out = Path(out)
    src = Path(source) if source else None
    own = [out, out.with_name(out.name + ".data")]
    protected = [src] if src is not None and src.is_file() else []
    if protected and any(Path(t).exists() for t in own + list(others)):
        # only an existing file can be one of the input's
        protected += list(source_files) if source_files is not None else data_files(src)
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

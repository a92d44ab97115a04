"""Writing models and reports through the output writer, and refusing outputs that would destroy
the input.

Every file goes through a `graphprune.ir.writer.OutputSet`: staged in the target folder,
fsynced, checked when a check is asked for, and renamed into place when the set commits, with
every other output of the command. A model's external data file is named after its content
(`<model name>.<16 hex of its SHA-256>.data`, see the writer) and switched before the model, so
a reader sees the old complete pair or the new one at every instant.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable

import onnx

from ..errors import UserError
from .load import data_files
from .storage import (TWO_GB, WeightStore, approx_bytes, copy_fields, goes_external,
                      has_external_tensors, set_external, write_data)
from .writer import OutputSet, check_targets


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


def stage_model(out: OutputSet, model: onnx.ModelProto, path: str | os.PathLike,
                external_data: bool = False, store: WeightStore | None = None,
                validate: Callable[[str], None] | None = None, rebase: bool = True) -> int:
    """Stage `model` for `path` in `out` (it is renamed into place when the set commits, with
    the set's other files), `validate(staged_model_path)` if given. Returns the bytes staged
    (model + data file).

    External data (`<name>.<hash>.data` beside the model) is used on request, when the model's
    weights are on disk (a lazily loaded model) and when the model would not fit one protobuf
    (> 2 GB). After such a write `model` and `store` refer to the data file as it will lie once
    committed, and the store's in-memory arrays are released; should the set abort instead,
    the store says the model can no longer be saved. `rebase` off (a copy written for a
    measurement): the model and store stay as they are.
    """
    if store is not None and store.broken:
        raise UserError(store.broken)
    lazy = has_external_tensors(model)
    if lazy or (not external_data and approx_bytes(model) > TWO_GB):
        external_data = True
    if not external_data:
        staged = out.add_model(path, model.SerializeToString())
        if validate:
            validate(str(staged))
        return out.size(path)
    data = out.add_data(path, lambda f: write_data(model, store, f))
    placed = data.result
    proto = external_proto(model, data.name, placed)
    staged = out.add_model(path, proto.SerializeToString(), data)
    del proto
    if store is not None and rebase:  # release the arrays before validation loads the model
        store.rebase(model, str(data.path.parent), data.name, placed)

        def broken() -> None:
            store.broken = ("this pruned model could not be saved and its data is gone; prune "
                            "again")

        out.on_abort(broken)
    if validate:
        validate(str(staged))
    return data.size + out.size(path)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool = False,
               store: WeightStore | None = None,
               validate: Callable[[str], None] | None = None,
               protect: Iterable[str | os.PathLike] = (), rebase: bool = True) -> int:
    """`stage_model` in an `OutputSet` of its own, committed at once. `protect`: files that
    must never be replaced or removed (the input model and its data files; the data files the
    store reads are always protected)."""
    protect = list(protect) + (sorted(store.source_files(model)) if store is not None else [])
    with OutputSet(protect=protect) as out:
        size = stage_model(out, model, path, external_data, store, validate, rebase)
    return size


def atomic_write_text(path: str | os.PathLike, text: str,
                      protect: Iterable[str | os.PathLike] = ()) -> None:
    """Write a text file atomically through the writer (never through a link or a device)."""
    with OutputSet(protect=protect) as out:
        out.add_text(path, text)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (through symlinks, hard links, relative paths)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _data_name_re(model: Path) -> re.Pattern:
    return re.compile(re.escape(model.name) + r"(\.[0-9a-f]{16})?\.data$")


def check_outputs(source: str | os.PathLike | None, out: str | os.PathLike,
                  others: tuple = (), source_files: list | None = None) -> list[Path]:
    """Refuse, before any work, outputs that would overwrite the input (the model or one of its
    data files) or each other, or that the writer would refuse (links, FIFOs, devices, folders,
    a trailing separator, a missing or read-only folder; see `graphprune.ir.writer`). Paths are
    taken as given (a string keeps its trailing separator). `source_files`: the input's data
    files when the caller knows them (else they are read from the input). Returns the paths
    the writer must protect: the input and its data files."""
    src = Path(source) if source else None
    protected = [src] if src is not None and src.is_file() else []
    if protected and any(os.path.lexists(t) for t in (out, *others)):
        # only an existing file can be one of the input's
        protected += list(source_files) if source_files is not None else data_files(src)
    if src is not None and same_file(out, src):
        raise UserError("output path equals the input; choose another -o")
    model_data = _data_name_re(Path(out))
    for o in others:
        if same_file(o, out) or (os.path.dirname(os.path.abspath(o)) ==
                                 os.path.dirname(os.path.abspath(out))
                                 and model_data.fullmatch(os.path.basename(o))):
            raise UserError(f"{o} would overwrite the output model; choose another path")
    for t in (out, *others):
        for f in protected:
            if same_file(t, f):
                raise UserError(f"{t} would overwrite the input {f}; choose another path")
    check_targets([out, *others], protect=protected)
    if src is not None and src.is_file() and len(protected) == 1:
        protected += list(source_files) if source_files is not None else data_files(src)
    return protected

"""`OutputSet`: every output of a command staged in the target folder and committed together;
a model's external data file named by its content and switched before the model."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ...errors import UserError
from .locks import (O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, _flock, _folder_locks, _fsync_folder,
                    _sweep, _unlock_close)
from .signals import signals_deferred
from .steps import step as _step
from .targets import (STAGE_PREFIX, STAGE_SUFFIX, _check_existing, _check_protect, _data_re,
                      _error, _folder_writable, _lstat, _protected, _same, _split,
                      data_file_name)

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 60.0
BUFFER = 1 << 20


@dataclass
class DataFile:
    """An external data file staged for `model`: `name` is the location the model must
    reference, `temp_path` where it lies until commit (beside the staged model)."""

    model: Path
    name: str
    path: Path
    temp_path: Path
    size: int
    sha256: str
    result: Any = None  # what the write function returned


@dataclass
class _Target:
    path: str  # absolute, in the real folder
    shown: str  # as the caller gave it
    folder: str
    name: str
    temp: str
    kind: str  # "file", "data", "model"
    data: DataFile | None = None
    size: int = 0


@dataclass
class _Stage:
    folder: str
    path: str
    fd: int  # held open and flocked while the set lives: marks the staging folder in use


class _HashingSink:
    """The file object a data write function gets: `write` and `tell` only (no `fileno`, so
    nothing can bypass the hash)."""

    def __init__(self, f):
        self._f = f
        self._h = hashlib.sha256()
        self._n = 0

    def write(self, b) -> int:
        m = memoryview(b)
        if not m.c_contiguous:
            m = memoryview(m.tobytes())
        m = m.cast("B")
        self._f.write(m)
        self._h.update(m)
        self._n += m.nbytes
        return m.nbytes

    def tell(self) -> int:
        return self._n

    def flush(self) -> None:
        self._f.flush()



def _all_or_nothing(method):
    """A failure while staging (an error, Ctrl-C, SIGTERM) aborts the whole set: what was
    staged is removed, and the set can no longer commit, even if the caller goes on."""

    def staged(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.abort()
            raise

    staged.__name__, staged.__doc__ = method.__name__, method.__doc__
    return staged


class OutputSet:
    """Files written together: each `add_*` renders one target into the staging folder now
    (fsynced); `commit()` renames them all into place; leaving a `with` block commits, an
    exception aborts (nothing replaced, staging removed). A failure inside an `add_*` aborts the
    set at once, so a caller that catches it cannot commit the rest.

    `protect`: paths that must never be written or removed (the input model and its data
    files). `create_folders`: make missing target folders (e.g. `sweep --out DIR`).
    """

    def __init__(self, protect: Iterable[str | os.PathLike] = (), *,
                 create_folders: bool = False, lock_timeout: float = LOCK_TIMEOUT_S):
        self._protect = _protected(protect)
        self._create = create_folders
        self._timeout = lock_timeout
        self._pid = os.getpid()
        self._stages: dict[str, _Stage] = {}
        self._targets: list[_Target] = []
        self._state = "open"
        self._on_abort: list[Callable[[], Any]] = []
        self._made: list[str] = []  # folders create_folders made, innermost first

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if os.getpid() != self._pid:  # a forked child: the parent's files are not ours
            return
        if exc_type is None and self._state == "open":
            self.commit()
        else:
            self.abort()

    # ------------------------------------------------------------------ adding
    def add_bytes(self, path: str | os.PathLike, data: bytes) -> Path:
        """Stage `data` for `path`; returns the staged file."""
        return self.add_stream(path, lambda f: f.write(data))

    def add_text(self, path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
        return self.add_bytes(path, text.encode(encoding))

    @_all_or_nothing
    def add_stream(self, path: str | os.PathLike, write_fn: Callable[[Any], Any]) -> Path:
        """Stage `path` by calling `write_fn(f)` with a binary file object (chunk-wise writes
        of big files; `savefig(f, format="png")`, `csv.writer(io.TextIOWrapper(f))`...)."""
        t = self._new(path, "file")
        self._fill(t, write_fn)
        return Path(t.temp)

    @_all_or_nothing
    def add_path(self, path: str | os.PathLike, write_fn: Callable[[str], Any]) -> Path:
        """Stage `path` by calling `write_fn(temp_path)` for libraries that want a file name;
        whatever it leaves there must be a regular file."""
        t = self._new(path, "file")
        try:
            write_fn(t.temp)
            st = _check_existing(t.temp, t.shown)
            if st is None:
                raise UserError(f"{t.shown}: nothing was written")
            fd = os.open(t.temp, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            t.size = st.st_size
        except OSError as e:
            raise _error(e, t.shown) from e
        _step(f"written:{t.name}")
        return Path(t.temp)

    @_all_or_nothing
    def add_data(self, model_path: str | os.PathLike,
                 write_fn: Callable[[Any], Any]) -> DataFile:
        """Stream the external data file of the model to be written at `model_path`:
        `write_fn(f)` writes its bytes (`f.write`, `f.tell`). Its name, `DataFile.name`, comes
        from the bytes' SHA-256 (see the module docstring); the model staged with `add_model`
        must reference it under that name. `write_fn`'s return value is kept in `.result`."""
        model = self._resolve(model_path)
        if any(t.kind == "data" and t.data.model == Path(model[1]) for t in self._targets):
            raise UserError(f"{model[0]}: its data file is staged already")
        stage = self._stage(model[2], model[0])
        partial = os.path.join(stage.path, f"{model[3]}.data.partial")
        sink_holder: list[_HashingSink] = []

        def write(f):
            sink = _HashingSink(f)
            sink_holder.append(sink)
            return write_fn(sink)

        t = _Target(path=model[1], shown=model[0], folder=model[2], name=model[3], temp=partial,
                    kind="data")
        result = self._write_file(t, write)
        sink = sink_holder[0]
        digest = sink._h.hexdigest()
        name = data_file_name(model[3], digest)
        final = os.path.join(model[2], name)
        shown = os.path.join(os.path.dirname(model[0]), name)
        _check_existing(final, shown)
        _check_protect(final, shown, self._protect)
        for other in self._targets:
            if _same(final, other.path):
                raise UserError(f"{shown} is also another output of this command")
        temp = os.path.join(stage.path, name)
        try:
            os.rename(partial, temp)
        except OSError as e:
            raise _error(e, shown) from e
        df = DataFile(model=Path(model[1]), name=name, path=Path(final), temp_path=Path(temp),
                      size=sink.tell(), sha256=digest, result=result)
        t.path, t.shown, t.name, t.temp, t.data, t.size = final, shown, name, temp, df, df.size
        self._targets.append(t)
        _step(f"written:{name}")
        return df

    @_all_or_nothing
    def add_model(self, path: str | os.PathLike, data: bytes | Callable[[Any], Any],
                  data_file: DataFile | None = None) -> Path:
        """Stage a model file (bytes, or a write function like `add_stream`). `data_file`: its
        external data from `add_data` (None: the model keeps its weights inline). At commit
        the data file goes first, the model second, then the data files of the model it
        replaces are removed."""
        t = self._new(path, "model")
        if data_file is not None and (data_file.model != Path(t.path) or not any(
                x.data is data_file for x in self._targets)):
            raise ValueError("data_file was staged for another model or another OutputSet")
        t.data = data_file
        self._fill(t, data if callable(data) else (lambda f: f.write(data)))
        return Path(t.temp)

    def temp_path(self, path: str | os.PathLike) -> Path:
        """Where the staged file for `path` lies until commit (e.g. to validate a model)."""
        _, folder, name = _split(path)
        target = os.path.join(folder, name)
        for t in self._targets:
            if t.path == target:
                return Path(t.temp)
        raise KeyError(os.fspath(path))

    def staged(self) -> list[Path]:
        """Final paths of everything staged so far."""
        return [Path(t.path) for t in self._targets]

    def size(self, path: str | os.PathLike) -> int:
        """Bytes staged for `path`."""
        return os.path.getsize(self.temp_path(path))

    # ------------------------------------------------------------------ internals
    def _own(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError("this OutputSet belongs to another process (made before a fork)")
        if self._state != "open":
            raise RuntimeError(f"this OutputSet is {self._state}")

    def _resolve(self, path) -> tuple[str, str, str, str]:
        """(shown, absolute target, real folder, name) after every check but the folder's."""
        self._own()
        raw = os.fspath(path)
        if self._create and isinstance(raw, str) and raw not in ("", "-"):
            folder = os.path.dirname(raw)
            if folder and not os.path.isdir(folder) and not raw.endswith(os.sep):
                missing, up = [], os.path.abspath(folder)
                while not os.path.lexists(up):
                    missing.append(up)
                    up = os.path.dirname(up)
                try:
                    os.makedirs(folder, exist_ok=True)
                except OSError as e:
                    raise UserError(f"{folder}: cannot make the output folder: "
                                    f"{e.strerror or e}") from None
                self._made += missing  # removed again (when still empty) if the set aborts
        shown, folder, name = _split(raw)
        target = os.path.join(folder, name)
        _check_existing(target, shown)
        _check_protect(target, shown, self._protect)
        for t in self._targets:
            if _same(target, t.path) or t.path == target:
                raise UserError(f"{shown} and {t.shown} are the same file; choose different "
                                "paths")
        return shown, target, folder, name

    def _new(self, path, kind: str) -> _Target:
        shown, target, folder, name = self._resolve(path)
        stage = self._stage(folder, shown)
        t = _Target(path=target, shown=shown, folder=folder, name=name,
                    temp=os.path.join(stage.path, name), kind=kind)
        if os.path.lexists(t.temp):  # same name on a case-insensitive file system
            raise UserError(f"{shown}: another output of this command has the same name")
        self._targets.append(t)
        return t

    def _stage(self, folder: str, shown: str) -> _Stage:
        s = self._stages.get(folder)
        if s is not None:
            return s
        _folder_writable(folder, os.path.dirname(shown) or ".")
        try:  # signals held: a staging folder is either registered here or never made
            with signals_deferred(), _folder_locks([folder], self._timeout) as locked:
                if locked[folder]:
                    _sweep(folder)
                path = tempfile.mkdtemp(prefix=STAGE_PREFIX, suffix=STAGE_SUFFIX, dir=folder)
                try:
                    fd = os.open(path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                except BaseException:
                    os.rmdir(path)
                    raise
                _flock(fd, None)  # a new folder: free, unless flock is unsupported
                s = _Stage(folder=folder, path=path, fd=fd)
                self._stages[folder] = s
        except OSError as e:
            raise _error(e, shown) from e
        _step("stage")
        return s

    def _write_file(self, t: _Target, write_fn) -> Any:
        try:
            fd = os.open(t.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         0o666)
        except FileExistsError:
            raise UserError(f"{t.shown}: another output of this command has the same name") \
                from None
        except OSError as e:
            raise _error(e, t.shown) from e
        try:
            with open(fd, "wb", buffering=BUFFER) as f:
                result = write_fn(f)
                f.flush()
                os.fsync(f.fileno())
                t.size = f.tell()
        except OSError as e:
            raise _error(e, t.shown) from e
        return result

    def _fill(self, t: _Target, write_fn) -> None:
        self._write_file(t, write_fn)
        _step(f"written:{t.name}")

    # ------------------------------------------------------------------ commit / abort
    def commit(self) -> list[Path]:
        """Rename every staged file into place (data files, then models, then the rest), then
        remove the data files the replaced models used. Returns the final paths."""
        self._own()
        try:
            with signals_deferred():
                try:
                    self._commit()
                except BaseException:
                    self._cleanup("aborted")
                    raise
                self._cleanup("committed")
        except OSError as e:  # pragma: no cover  (mapped inside; a stray one still is one line)
            raise _error(e, "the outputs", replaced=True) from e
        return [Path(t.path) for t in self._targets]

    def _commit(self) -> None:
        models = [t for t in self._targets if t.kind == "model"]
        datas = [t for t in self._targets if t.kind == "data"]
        for d in datas:
            if not any(m.data is d.data for m in models):
                raise RuntimeError(f"data file {d.shown} staged without its model")
        order = datas + models + [t for t in self._targets if t.kind == "file"]
        folders = {t.folder for t in self._targets}
        with _folder_locks(folders, self._timeout) as locked:
            _step("locked")
            for t in order:  # again: the folder may have changed while the files were written
                _check_existing(t.path, t.shown)
                _check_protect(t.path, t.shown, self._protect)
            replaced = False
            new_names: list[str] = []
            try:
                for group in (datas, models, order[len(datas) + len(models):]):
                    for t in group:
                        existed = os.path.lexists(t.path)
                        os.rename(t.temp, t.path)
                        if t.kind == "data" and not existed:
                            new_names.append(t.path)
                        replaced = replaced or t.kind != "data"
                        _step(f"renamed:{t.name}")
                    for f in {t.folder for t in group}:
                        _fsync_folder(f)
            except OSError as e:
                if not replaced:  # the models are the old ones: their new data files go
                    for p in new_names:
                        try:
                            os.unlink(p)
                        except OSError:
                            pass
                raise _error(e, t.shown, replaced=replaced) from e
            for m in models:
                if locked.get(m.folder):
                    self._remove_old_data(m)
                else:
                    log.warning("%s: no lock on its folder; the previous data file is kept",
                                m.shown)

    def _remove_old_data(self, m: _Target) -> None:
        pattern = _data_re(m.name)
        keep = {t.path for t in self._targets}
        removed = False
        try:
            names = os.listdir(m.folder)
        except OSError:
            return
        for n in sorted(names):
            p = os.path.join(m.folder, n)
            if not pattern.match(n) or p in keep:
                continue
            st = _lstat(p)
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            if any(_same(p, q) for q in self._protect):
                continue
            try:
                os.unlink(p)
                removed = True
            except OSError as e:
                log.warning("cannot remove the previous data file %s: %s", p, e.strerror or e)
                continue
            _step(f"removed:{n}")
        if removed:
            _fsync_folder(m.folder)

    def abort(self) -> None:
        """Remove everything staged; nothing is replaced. Safe to call more than once."""
        if os.getpid() != self._pid or self._state != "open":
            return
        with signals_deferred():
            self._cleanup("aborted")

    def on_abort(self, fn: Callable[[], Any]) -> None:
        """Call `fn()` if the set aborts (e.g. to mark objects that referred to staged files as
        unusable); never called once the set has committed."""
        self._own()
        self._on_abort.append(fn)

    def _cleanup(self, state: str) -> None:
        self._state = state
        for s in self._stages.values():
            shutil.rmtree(s.path, ignore_errors=True)
            _unlock_close(s.fd)
        self._stages.clear()
        if state == "committed":
            _step("committed")
        else:
            for folder in self._made:
                try:
                    os.rmdir(folder)
                except OSError:  # not empty (someone else's files), or gone
                    continue
            for fn in self._on_abort:
                fn()
        self._made.clear()
        self._on_abort.clear()


# ====================================================================== one file
def atomic_write_bytes(path: str | os.PathLike, data: bytes,
                       protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Write one file through an `OutputSet`: staged, fsynced, renamed into place."""
    with OutputSet(protect) as out:
        out.add_bytes(path, data)
    return out.staged()[0]


def atomic_write_text(path: str | os.PathLike, text: str,
                      protect: Iterable[str | os.PathLike] = (), encoding: str = "utf-8") -> Path:
    """`atomic_write_bytes` for text (reports, HTML, CSV)."""
    return atomic_write_bytes(path, text.encode(encoding), protect)

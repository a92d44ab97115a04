"""Writing output files safely: every artifact of a command committed together, never through a
link or a device, never half written, a model and its data file switched as one.

Every file a command writes (the model, its external data file, the JSON, HTML and CSV reports,
plots) goes through an `OutputSet`::

    with OutputSet(protect=[input_model, *input_data_files]) as out:
        data = out.add_data(model_path, stream_tensors)       # streamed, hashed, fsynced
        out.add_model(model_path, proto_bytes(location=data.name), data)
        validate(out.temp_path(model_path))                   # the staged pair, final names
        out.add_text(report_path, json_text)
    # leaving the block commits; an exception (or Ctrl-C, SIGTERM) replaces nothing

**Targets.** A target must be a regular file or not exist. A symbolic link (even to a regular
file; `/proc/self/fd/N` and `/dev/stdout` are links), a FIFO, a device node (`/dev/null`), a
socket or a folder is refused with a one-line `UserError` before anything is written, and so is
a path ending in a separator (`newdir/`), `-`, a target in a missing, non-folder, read-only or
unwritable folder, two targets of one set that are the same file (relative paths, symlinked
folders, hard links) and a target that is one of the `protect`ed paths (the input model and its
data files). Nothing is ever written through an existing path: files are created in a staging
folder and renamed over the target, which replaces the name and never follows it.

**No stdout, no devices.** The writer never writes to standard output or to a device: `-o -`
and `-o /dev/stdout` are refused like any link or device. Output meant for a pipe is the
command's business (`--json` prints the report on stdout); a model or report file is always a
regular file that is complete once it exists.

**Staging.** Each set stages its files in one hidden folder per target folder,
`.graphprune-XXXXXXXX.tmp` (created like `mkdtemp`: exclusive, mode 0700), inside the target
folder, so the final rename stays on one file system. Staged files have their final names
inside it (created with O_EXCL | O_NOFOLLOW, mode 0666 minus the umask) and are fsynced when
written, so a staged model resolves its staged data file by its final name and can be validated
as it will be read. Commit renames everything into place only when every file is written; if
anything fails first, nothing is replaced and the staging folder is removed: on an exception,
on Ctrl-C (KeyboardInterrupt) and on SIGTERM/SIGHUP once `install_signal_handlers()` has turned
them into a `Terminated` exception. The commit itself (renames and fsyncs, milliseconds) runs
with SIGINT, SIGTERM and SIGHUP deferred, and the signal is delivered once it is done, so a
signal never splits a commit: it lands before it (nothing replaced) or after it (all replaced).
A process created with `os.fork` never runs its parent's cleanup or commit: an `OutputSet`
acts only in the process that made it, and the SIGTERM handler is reset in forked children.

**Model and data file.** The data file of a model is named after its content:
`<model file name>.<first 16 hex digits of its SHA-256>.data` (`o.onnx.3f2a…e1.data`), computed
while it streams. The same model therefore gets byte-identical files in any folder, on every
run, and a new data file never takes the name of the one the previous model reads unless their
bytes are the same. Commit renames the data file first, then the model (which references it),
then removes the previous model's data file. A reader sees, at every instant and even after a
SIGKILL between any two steps, either the old complete pair or the new complete pair; files
are fsynced before they are renamed and the folder after each rename, so the order also holds
on disk after a crash of the machine. What is removed after the
switch: files beside the model named `<model name>.data` (the fixed name of older versions) or
`<model name>.<16 hex>.data` that the new model does not use and that are not protected. A
reader that has already opened the old data file keeps reading it (POSIX unlink); one that read
the old model and opens its data file only after the switch finds it gone.

**Concurrency.** Two processes writing the same output stage in their own folders; commits into
a folder are serialized by an advisory `flock` on the folder itself (no lock file is left
behind), held only while a staging folder is created and while a set commits. The last commit
wins, and it is a complete pair: the loser's data file is removed by the winner like any
previous one. Each staging folder is flocked by its process while it lives, so a later write
into the same folder removes staging folders left by a killed process (SIGKILL) and the data
file such a kill may leave unreferenced between the two renames, and never one in use. Where
`flock` is not available (no `fcntl`; NFS, where it cannot lock a folder), writes stay atomic
and never mix pairs, but stale staging folders and old data files are left in place.

**Errors.** Missing, read-only or unwritable folders, disk full (ENOSPC, EDQUOT), I/O errors
and permission errors while writing are one-line `UserError`s, raised with nothing replaced.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import UserError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["OutputSet", "DataFile", "Terminated", "install_signal_handlers", "check_target",
           "check_targets", "atomic_write_bytes", "atomic_write_text", "data_file_name",
           "STAGE_PREFIX", "STAGE_SUFFIX"]

log = logging.getLogger(__name__)

STAGE_PREFIX, STAGE_SUFFIX = ".graphprune-", ".tmp"
HASH_CHARS = 16
LOCK_TIMEOUT_S = 60.0
BUFFER = 1 << 20
_STAGE_RE = re.compile(r"^" + re.escape(STAGE_PREFIX) + r"[a-z0-9_]{8}" + re.escape(STAGE_SUFFIX)
                       + r"$")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NO_LOCK = {errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP,
            getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}

# Test seam: called with the name of each step ("stage", "written:NAME", "locked",
# "renamed:NAME", "removed:NAME", "committed"), so tests can stop or kill a write between any two
# steps. Never set in production.
_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _hook is not None:
        _hook(name)


# ====================================================================== signals
class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread by the handler `install_signal_handlers`
    sets, so `finally` blocks and `OutputSet` cleanup run. A `BaseException` like
    KeyboardInterrupt: `except Exception` does not swallow it. `exit_code` is 128 + the signal
    number (143 for SIGTERM), what a shell reports for a process the signal ended."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


_TERM_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))
_DEFER_SIGNALS = (signal.SIGINT,) + _TERM_SIGNALS
_installed_pid: int | None = None
_fork_hook_registered = False


def _on_signal(signum, frame) -> None:
    if os.getpid() != _installed_pid:  # a forked child that inherited the handler: just die
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(signum)


def _reset_in_child() -> None:
    for s in _TERM_SIGNALS:
        try:
            if signal.getsignal(s) is _on_signal:
                signal.signal(s, signal.SIG_DFL)
        except (ValueError, OSError):  # pragma: no cover
            pass


def install_signal_handlers() -> Callable[[], None]:
    """Turn SIGTERM and SIGHUP into `Terminated` in the main thread (signals a process ignores,
    e.g. SIGHUP under nohup, stay ignored). Ctrl-C keeps Python's KeyboardInterrupt. Processes
    forked afterwards get the default action back (they die, running none of the parent's
    cleanup). Call from the main thread; returns a function that restores the previous
    handlers."""
    global _installed_pid, _fork_hook_registered
    _installed_pid = os.getpid()
    previous = {}
    for s in _TERM_SIGNALS:
        old = signal.getsignal(s)
        if old == signal.SIG_IGN:
            continue
        signal.signal(s, _on_signal)
        previous[s] = old
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_reset_in_child)
        _fork_hook_registered = True

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    return restore


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP are held while the block runs and delivered (to the handlers that
    were in place) right after it, so a commit or a cleanup is never cut in two."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def defer(signum, frame):
        pending.append(signum)

    old = {}
    for s in _DEFER_SIGNALS:
        h = signal.getsignal(s)
        if h is None or h == signal.SIG_IGN:  # set outside Python, or ignored: leave it
            continue
        try:
            signal.signal(s, defer)
            old[s] = h
        except (ValueError, OSError):  # pragma: no cover
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


# ====================================================================== targets
def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _split(path: str | os.PathLike) -> tuple[str, str, str]:
    """(as given, real folder, file name) of a target; refuses names that are not files."""
    raw = os.fspath(path)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if raw == "-":
        raise UserError("'-' is not a file: graphprune writes only regular files (--json prints "
                        "on stdout)")
    seps = (os.sep, os.altsep) if os.altsep else (os.sep,)
    name = os.path.basename(raw)
    if not raw or raw.endswith(seps) or name in ("", ".", ".."):
        raise UserError(f"{raw or repr(raw)}: names a folder, not a file")
    folder = os.path.dirname(raw) or "."
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise UserError(f"{folder}: output folder does not exist") from None
    except OSError as e:
        raise UserError(f"{folder}: cannot use the output folder: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{folder}: is not a folder")
    return raw, os.path.realpath(folder), name


def _folder_writable(folder: str, shown: str) -> None:
    try:
        readonly = bool(os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):
        readonly = False
    if readonly:
        raise UserError(f"{shown}: output folder is on a read-only file system")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{shown}: output folder is not writable")


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _check_existing(path: str, shown: str) -> os.stat_result | None:
    st = _lstat(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = _kind(st.st_mode)
        extra = "; graphprune never writes through links" if what == "a symbolic link" else ""
        raise UserError(f"{shown}: is {what}, not a regular file{extra}; choose another path")
    return st


def _same(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _protected(protect: Iterable[str | os.PathLike]) -> list[str]:
    return [os.path.abspath(os.fspath(p)) for p in protect]


def _check_protect(target: str, shown: str, protect: list[str]) -> None:
    for p in protect:
        if _same(target, p):
            raise UserError(f"{shown} would overwrite the input {p}; choose another path")


def check_target(path: str | os.PathLike, protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse (one-line UserError) a path the writer would not write; returns the target's
    absolute path in its real folder. Nothing is created."""
    raw, folder, name = _split(path)
    target = os.path.join(folder, name)
    _check_existing(target, raw)
    _check_protect(target, raw, _protected(protect))
    _folder_writable(folder, os.path.dirname(raw) or ".")
    return Path(target)


def check_targets(paths: Iterable[str | os.PathLike],
                  protect: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """`check_target` for each path, and no two of them the same file. For a CLI to call before
    any work (an `OutputSet` checks again as files are added and at commit)."""
    protect = list(protect)
    out: list[tuple[str, Path]] = []
    for p in paths:
        t = check_target(p, protect)
        for shown, prev in out:
            if _same(str(t), str(prev)):
                raise UserError(f"{os.fspath(p)} and {shown} are the same file; choose "
                                "different paths")
        out.append((os.fspath(p), t))
    return [t for _, t in out]


def data_file_name(model_name: str, sha256_hex: str) -> str:
    """The name of a model's external data file: `<model name>.<16 hex of its SHA-256>.data`."""
    return f"{model_name}.{sha256_hex[:HASH_CHARS]}.data"


def _data_re(model_name: str) -> re.Pattern:
    return re.compile(r"^" + re.escape(model_name) + r"(\.[0-9a-f]{%d})?\.data$" % HASH_CHARS)


# ====================================================================== locks
def _flock(fd: int, blocking_s: float | None) -> bool | None:
    """Exclusive flock: True when taken, False when busy (non-blocking), None when the file
    system cannot lock."""
    if fcntl is None:
        return None
    deadline = None if blocking_s is None else time.monotonic() + blocking_s
    pause = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno in _NO_LOCK:
                return None
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if deadline is None or time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _unlock_close(fd: int) -> None:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
    os.close(fd)


@contextmanager
def _folder_locks(folders: Iterable[str], timeout: float) -> Iterator[dict[str, bool]]:
    """Advisory locks on the folders (sorted, so two sets never deadlock); yields which could
    be locked."""
    fds: list[int] = []
    locked: dict[str, bool] = {}
    try:
        for f in sorted(set(folders)):
            fd = os.open(f, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
            fds.append(fd)
            got = _flock(fd, timeout)
            if got is False:
                raise UserError(f"{f}: another process keeps writing into this folder (waited "
                                f"{timeout:.0f} s for its lock)")
            locked[f] = bool(got)
        yield locked
    finally:
        for fd in reversed(fds):
            _unlock_close(fd)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def _sweep(folder: str) -> None:
    """Remove staging folders whose process is gone (their flock is free). Caller holds the
    folder's lock, so a staging folder being created is never seen unlocked."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for n in names:
        if not _STAGE_RE.match(n):
            continue
        p = os.path.join(folder, n)
        st = _lstat(p)
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        try:
            fd = os.open(p, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
        except OSError:
            continue
        try:
            if _flock(fd, None) is True:
                log.debug("removing %s, left by a process that was killed", p)
                shutil.rmtree(p, ignore_errors=True)
        finally:
            _unlock_close(fd)


# ====================================================================== the set
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


def _error(e: OSError, shown: str, replaced: bool = False) -> UserError:
    if e.errno in _FULL:
        why = "no space left on the device" if e.errno != errno.EFBIG else "file too large"
    elif e.errno == errno.EROFS:
        why = "read-only file system"
    else:
        why = e.strerror or str(e)
    tail = "" if replaced else "; nothing was replaced"
    return UserError(f"cannot write {shown}: {why}{tail}")


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
            fd = os.open(t.temp, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
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
                try:
                    os.makedirs(folder, exist_ok=True)
                except OSError as e:
                    raise UserError(f"{folder}: cannot make the output folder: "
                                    f"{e.strerror or e}") from None
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
            with _signals_deferred(), _folder_locks([folder], self._timeout) as locked:
                if locked[folder]:
                    _sweep(folder)
                path = tempfile.mkdtemp(prefix=STAGE_PREFIX, suffix=STAGE_SUFFIX, dir=folder)
                try:
                    fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
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
            fd = os.open(t.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC,
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
            with _signals_deferred():
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
        with _signals_deferred():
            self._cleanup("aborted")

    def _cleanup(self, state: str) -> None:
        self._state = state
        for s in self._stages.values():
            shutil.rmtree(s.path, ignore_errors=True)
            _unlock_close(s.fd)
        self._stages.clear()
        if state == "committed":
            _step("committed")


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

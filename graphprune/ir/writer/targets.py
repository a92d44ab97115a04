"""What the writer refuses to write, checked before anything is created: links, FIFOs, devices,
sockets, folders, names that are not files, missing or read-only folders, two targets that are
one file, protected inputs. Also the names of data files and one-line errors for OSErrors."""
from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Iterable

from ...errors import UserError

STAGE_PREFIX, STAGE_SUFFIX = ".graphprune-", ".tmp"
HASH_CHARS = 16
STAGE_RE = re.compile(r"^" + re.escape(STAGE_PREFIX) + r"[a-z0-9_]{8}" + re.escape(STAGE_SUFFIX)
                      + r"$")
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


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



def _error(e: OSError, shown: str, replaced: bool = False) -> UserError:
    if e.errno in _FULL:
        why = "no space left on the device" if e.errno != errno.EFBIG else "file too large"
    elif e.errno == errno.EROFS:
        why = "read-only file system"
    else:
        why = e.strerror or str(e)
    tail = "" if replaced else "; nothing was replaced"
    return UserError(f"cannot write {shown}: {why}{tail}")

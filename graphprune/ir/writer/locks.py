"""Advisory locks on output folders and staging folders, folder fsyncs, and removing the staging
folders of killed processes."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

from ...errors import UserError
from .targets import STAGE_RE, _lstat

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NO_LOCK = {errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP,
            getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


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
            fd = os.open(f, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
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
        fd = os.open(folder, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
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
        if not STAGE_RE.match(n):
            continue
        p = os.path.join(folder, n)
        st = _lstat(p)
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        try:
            fd = os.open(p, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        except OSError:
            continue
        try:
            if _flock(fd, None) is True:
                log.debug("removing %s, left by a process that was killed", p)
                shutil.rmtree(p, ignore_errors=True)
        finally:
            _unlock_close(fd)

"""Run a function in a forked child process, for ONNX Runtime runs of untrusted models.

A model that crashes ORT (a kernel dividing by zero, an abort) must end in a clean error, not
take graphprune down with it — a crash in the middle of a write would also leave temporary
files. The child shares the parent's memory copy-on-write, so forking costs milliseconds and no
copy of the weights. The result (feeds and outputs: small arrays) comes back pickled.

`start` forks and returns at once, so the parent can go on working while the child runs (the
original model's reference run overlaps the analysis); `Pending.result()` collects it.
"""
from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import sys

from ..errors import UserError, ValidationError

_ERRORS = {"UserError": UserError, "ValidationError": ValidationError}


def _forking() -> bool:
    """Off Linux (fork is missing or unsafe with system frameworks) or with GRAPHPRUNE_NO_FORK
    set, functions run in-process."""
    return sys.platform.startswith("linux") and not os.environ.get("GRAPHPRUNE_NO_FORK")


class Pending:
    """A function running in a child process (or, without fork, its finished result)."""

    def __init__(self, fn, args, crash, fork: bool = True):
        self.crash = crash
        self.pid = None
        self._done = False
        self._value = self._error = None
        if not (fork and _forking()):
            try:
                self._value = fn(*args)
            except BaseException as e:  # noqa: BLE001  (raised by result(), like a child's)
                self._error = e
            self._done = True
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns, never runs the parent's exit handlers
            code = 0
            try:
                os.close(r)
                faulthandler.disable()  # a crash here is reported by the parent, in one line
                try:
                    payload = ("ok", fn(*args))
                except BaseException as e:  # noqa: BLE001  (everything goes to the parent)
                    payload = ("err", type(e).__name__, str(e))
                with os.fdopen(w, "wb") as f:
                    f.write(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self._read = pid, r

    def result(self):
        """The function's return value; its exception (UserError / ValidationError keep their
        type), or `crash(reason)` when the child died."""
        if not self._done:
            self._collect()
        if self._error is not None:
            raise self._error
        return self._value

    def cancel(self) -> None:
        """Stop the child if it still runs (the parent is giving up: Ctrl-C, an error)."""
        if self._done or self.pid is None:
            return
        self._done = True
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass
        try:
            os.close(self._read)
        except OSError:
            pass

    def _collect(self) -> None:
        try:
            with os.fdopen(self._read, "rb") as f:
                data = f.read()
            _, status = os.waitpid(self.pid, 0)
        except BaseException:  # Ctrl-C while waiting: the child goes too
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except OSError:
                pass
            self._done = True
            raise
        self._done = True
        if not data:
            code = os.waitstatus_to_exitcode(status)
            why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            self._error = self.crash(why)
            return
        payload = pickle.loads(data)
        if payload[0] == "ok":
            self._value = payload[1]
            return
        kind, msg = payload[1], payload[2]
        if kind == "KeyboardInterrupt":
            self._error = KeyboardInterrupt()
            return
        self._error = _ERRORS.get(kind, ValidationError)(
            msg if kind in _ERRORS else f"{kind}: {msg}")


def start(fn, *args, crash, fork: bool = True) -> Pending:
    """Start `fn(*args)` in a forked child; `crash(reason)` builds the exception raised when
    the child dies. `fork=False` runs it here (an accelerator's context does not survive a
    fork)."""
    return Pending(fn, args, crash, fork)


def isolated(fn, *args, crash):
    """`fn(*args)` in a forked child process, waiting for it (see the module docstring)."""
    return start(fn, *args, crash=crash).result()

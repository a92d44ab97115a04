"""Run a function in a forked child process, for ONNX Runtime runs of untrusted models."""
from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import sys

from ..errors import UserError, ValidationError

_ERRORS = {"UserError": UserError, "ValidationError": ValidationError}


def isolated(fn, *args, crash):
    """`fn(*args)` in a forked child process, for ONNX Runtime runs of untrusted models: a model
    that crashes ORT (a kernel dividing by zero, an abort) must end in a clean error, not take
    graphprune down with it — a crash in the middle of a write would also leave temporary files.
    The child shares the parent's memory copy-on-write, so forking costs milliseconds and no
    copy of the weights. The result (feeds and outputs: small arrays) comes back pickled.

    `crash(reason)` builds the exception raised when the child dies. Off Linux (fork is missing
    or unsafe with system frameworks) or with GRAPHPRUNE_NO_FORK set, `fn` runs in-process.
    """
    if not sys.platform.startswith("linux") or os.environ.get("GRAPHPRUNE_NO_FORK"):
        return fn(*args)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        code = 0
        try:
            os.close(r)
            faulthandler.disable()  # a crash here is reported by the parent, in one line
            try:
                payload = ("ok", fn(*args))
            except BaseException as e:  # noqa: BLE001  (everything goes back to the parent)
                payload = ("err", type(e).__name__, str(e))
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:  # Ctrl-C while waiting: the child goes too
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        raise
    if not data:
        code = os.waitstatus_to_exitcode(status)
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise crash(why)
    payload = pickle.loads(data)
    if payload[0] == "ok":
        return payload[1]
    kind, msg = payload[1], payload[2]
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    raise _ERRORS.get(kind, ValidationError)(msg if kind in _ERRORS else f"{kind}: {msg}")

"""SIGTERM and SIGHUP as an exception, so cleanup runs; signals held while a commit runs."""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["Terminated", "install_signal_handlers", "signals_deferred"]


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
def signals_deferred() -> Iterator[None]:
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


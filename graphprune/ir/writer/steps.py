"""The writer's test seam: every step of a write is named ("stage", "written:NAME", "locked",
"renamed:NAME", "removed:NAME", "committed"), so tests can stop or kill a write between any two
steps. Never set in production."""
from __future__ import annotations

from typing import Callable

_hook: Callable[[str], None] | None = None


def set_step_hook(hook: Callable[[str], None] | None) -> None:
    """Call `hook(step_name)` at each step of every write (None: stop)."""
    global _hook
    _hook = hook


def step(name: str) -> None:
    if _hook is not None:
        _hook(name)

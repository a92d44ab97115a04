"""Progress display: bars and phase messages for a person watching a terminal, never in pipes,
logs or CI files."""
from __future__ import annotations

import sys


def progress_enabled(quiet: bool = False) -> bool:
    """Progress bars only for a person watching a terminal: never in pipes, logs or CI files."""
    return not quiet and sys.stderr is not None and sys.stderr.isatty()


def bar(iterable, enabled: bool, desc: str, total: int | None = None):
    """A tqdm bar on stderr when enabled, else the iterable unchanged."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False)

"""Drawing plots from names a model controls: matplotlib set up once, text drawn as text.

Tensor and node names come from the model file, so they are drawn as plain text: `$...$` is not
parsed as mathtext (a name like `$\\undefinedmacro{x}$` would make matplotlib raise), and
missing glyphs (CJK names, emoji in DejaVu Sans) or font lookups do not print warnings on
stderr, which carries one line per failure and nothing with `--quiet`.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def plotting() -> Iterator[object]:
    """`matplotlib.pyplot` on the Agg backend, with math text off and warnings silenced."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    mpl_log = logging.getLogger("matplotlib")
    level = mpl_log.level
    mpl_log.setLevel(max(level, logging.ERROR))
    try:
        with warnings.catch_warnings(), matplotlib.rc_context(
                {"text.parse_math": False, "text.usetex": False}):
            warnings.simplefilter("ignore")
            yield plt
    finally:
        mpl_log.setLevel(level)

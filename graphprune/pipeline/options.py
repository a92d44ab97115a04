"""The options of one prune, checked in one place, and what they imply."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..analysis.build import KINDS
from ..criteria import CRITERIA
from ..errors import UserError

CALIB_CRITERIA = ("wanda", "flap", "obspa", "amp", "lrp")  # read calibration samples
STATS_CRITERIA = ("wanda", "flap", "obspa", "amp")  # read consumer statistics
COMPENSATIONS = ("flap", "obspa")


@dataclass
class PruneOptions:
    ratio: float = 0.3
    criterion: str = "magnitude"
    global_rank: bool = False
    round_to: int = 1
    min_keep: int = 1
    protect: list[str] = field(default_factory=list)
    seed: int = 0
    validate: bool = True
    dims: tuple[str, ...] = KINDS
    drop_blocks: int = 0
    # calibration for the data-aware criteria (see graphprune.calibration.data): a .npz path,
    # a folder of images, a dict of arrays, or an int N for N random samples
    calib: object = None
    preprocess: str = "imagenet"
    labels: object = None
    # compensation after selection: None = what the criterion implies (obspa -> "obspa",
    # flap -> "flap"), False/"none" = off, or "flap" / "obspa" explicitly
    compensate: object = None
    # calibration from text for language models (graphprune.calibration.text): a text file, a
    # tokenizer (tokenizer.json, a tokenizer folder or a callable text -> ids), window length
    calib_text: object = None
    tokenizer: object = None
    seq_len: int = 128
    # remove this fraction of the model's parameters instead of `ratio` of every group's units
    # (uniform widths, or ranked across groups with global_rank; see transforms.select)
    target_params: float | None = None

    def check(self) -> None:
        if isinstance(self.dims, str):
            self.dims = tuple(d.strip() for d in self.dims.split(",") if d.strip())
        bad = [d for d in self.dims if d not in KINDS]
        if bad or not self.dims:
            raise UserError(f"--dims takes a comma list of {','.join(KINDS)}; got {bad or 'nothing'}")
        if self.drop_blocks < 0:
            raise UserError(f"--drop-blocks must be >= 0, got {self.drop_blocks}")
        if not _finite_in(self.ratio, 0.0, 1.0):
            raise UserError(f"--ratio must be in [0, 1), got {self.ratio}")
        if self.criterion not in CRITERIA:
            raise UserError(f"unknown criterion {self.criterion!r}; choose from {sorted(CRITERIA)}")
        if self.calib_text is not None and self.calib is not None:
            raise UserError("give either --calib/--calib-random or --calib-text, not both")
        if self.target_params is not None and not (
                _finite_in(self.target_params, 0.0, 1.0) and self.target_params > 0):
            raise UserError(f"--target-params must be in (0, 1), got {self.target_params}")
        if self.round_to < 1:
            raise UserError(f"--round-to must be >= 1, got {self.round_to}")
        if self.min_keep < 1:
            raise UserError(f"--min-keep must be >= 1, got {self.min_keep}")
        if not 0 <= self.seed < 2 ** 63:
            raise UserError(f"--seed must be in [0, 2^63), got {self.seed}")
        if isinstance(self.protect, str):
            self.protect = [self.protect]
        compensation_mode(self)  # refuses an unknown mode

    @property
    def has_calibration(self) -> bool:
        return self.calib is not None or self.calib_text is not None


def _finite_in(value, lo: float, hi: float) -> bool:
    """A finite number in [lo, hi)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and lo <= v < hi


def compensation_mode(opts: PruneOptions) -> str | None:
    """The compensation a run applies: the criterion's own by default (obspa → least squares,
    flap → bias), none when switched off."""
    c = opts.compensate
    if c is None:
        return {"obspa": "obspa", "flap": "flap"}.get(opts.criterion)
    if c is False or c == "none":
        return None
    if c is True:
        return {"flap": "flap"}.get(opts.criterion, "obspa")
    if c not in COMPENSATIONS:
        raise UserError(f"compensate takes flap, obspa or none; got {c!r}")
    return c

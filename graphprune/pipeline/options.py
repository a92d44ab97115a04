"""The options of one prune, checked in one place, and what they imply."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..analysis.build import KINDS
from ..criteria import CRITERIA
from ..errors import UserError
from ..ir.inputs import parse_input_shapes
from ..runtime.session import resolve_provider

CALIB_CRITERIA = ("wanda", "flap", "obspa", "amp", "lrp")  # read calibration samples
STATS_CRITERIA = ("wanda", "flap", "obspa", "amp")  # read consumer statistics
GRAM_CRITERIA = ("obspa", "amp")  # read the channel Gram matrices (E[x xᵀ]), not only diagonals
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
    # remove this fraction of the model's MACs instead (same modes as target_params)
    target_macs: float | None = None
    # per-layer control: {pattern: ratio} for the groups a pattern owns (fnmatch on node and
    # tensor names, or op:TYPE), a cap on what any group loses, op types whose groups are frozen
    ratio_for: dict = field(default_factory=dict)
    max_ratio: float | None = None
    protect_op: list[str] = field(default_factory=list)
    allow_unmatched: bool = False  # a pattern matching nothing is then no error
    steps: int = 1  # reach the target in this many prune -> compensate rounds
    # a saved or edited plan (path, dict or PrunePlan): replaces scoring and selection
    plan: object = None
    # static dims for named inputs ({"x": (1, 3, 224, 224)} or "x:1x3x224x224"): shape
    # inference, MACs, random validation inputs; the written model keeps its own dims
    input_shapes: object = None
    # ONNX Runtime execution provider of calibration and validation runs (cpu, cuda, ...)
    provider: str = "CPUExecutionProvider"

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
        if self.criterion is not None and not callable(self.criterion) \
                and self.criterion not in CRITERIA:
            raise UserError(f"unknown criterion {self.criterion!r}; choose from {sorted(CRITERIA)}")
        if self.calib_text is not None and self.calib is not None:
            raise UserError("give either --calib/--calib-random or --calib-text, not both")
        if self.target_params is not None and not (
                _finite_in(self.target_params, 0.0, 1.0) and self.target_params > 0):
            raise UserError(f"--target-params must be in (0, 1), got {self.target_params}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise UserError(f"--steps must be an integer >= 1, got {self.steps}")
        if self.round_to < 1:
            raise UserError(f"--round-to must be >= 1, got {self.round_to}")
        if self.min_keep < 1:
            raise UserError(f"--min-keep must be >= 1, got {self.min_keep}")
        if not 0 <= self.seed < 2 ** 63:
            raise UserError(f"--seed must be in [0, 2^63), got {self.seed}")
        if isinstance(self.protect, str):
            self.protect = [self.protect]
        if isinstance(self.protect_op, str):
            self.protect_op = [self.protect_op]
        self.protect, self.protect_op = list(self.protect), list(self.protect_op)
        if self.target_macs is not None and not (
                _finite_in(self.target_macs, 0.0, 1.0) and self.target_macs > 0):
            raise UserError(f"--target-macs must be in (0, 1), got {self.target_macs}")
        if self.target_macs is not None and self.target_params is not None:
            raise UserError("give either --target-params or --target-macs, not both")
        self.ratio_for = parse_ratio_for(self.ratio_for)
        if self.max_ratio is not None and not (_finite_in(self.max_ratio, 0.0, 1.0 + 1e-12)
                                               and self.max_ratio > 0):
            raise UserError(f"--max-ratio must be in (0, 1], got {self.max_ratio}")
        if self.plan is not None:
            from .plans import load

            self.plan = load(self.plan)
            given = [f for f, v in (("--steps", self.steps > 1),
                                    ("--target-params", self.target_params is not None),
                                    ("--target-macs", self.target_macs is not None),
                                    ("--ratio-for", bool(self.ratio_for)),
                                    ("--drop-blocks", bool(self.drop_blocks))) if v]
            if given:
                raise UserError(f"a plan fixes every width; {', '.join(given)} cannot be "
                                "combined with --plan")
            if self.criterion is None:
                self.criterion = self.plan.get("options", {}).get("criterion", "magnitude")
        self.input_shapes = parse_input_shapes(self.input_shapes)
        self.provider = resolve_provider(self.provider)
        compensation_mode(self)  # refuses an unknown mode
        if self.steps > 1 and (compensation_mode(self) is None or not self.has_calibration):
            raise UserError("--steps needs compensation on calibration data (obspa or flap "
                            "with --calib/--calib-random/--calib-text): without it, pruning "
                            "in steps measured worse than in one shot (README, Iterative "
                            "pruning)")

    @property
    def criterion_name(self) -> str:
        c = self.criterion
        return c if isinstance(c, str) else getattr(c, "__name__", type(c).__name__)

    @property
    def has_calibration(self) -> bool:
        return self.calib is not None or self.calib_text is not None


def parse_ratio_for(spec) -> dict[str, float]:
    """{pattern: ratio} from a dict, or from `PATTERN=R` strings (the command line's form)."""
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, dict):
        items = {}
        for text in spec or ():
            pat, sep, r = str(text).rpartition("=")
            if not sep or not pat:
                raise UserError(f"--ratio-for takes PATTERN=R, got {text!r}")
            items[pat] = r
        spec = items
    out = {}
    for pat, r in spec.items():
        try:
            v = float(r)
        except (TypeError, ValueError):
            v = float("nan")
        if not _finite_in(v, 0.0, 1.0):
            raise UserError(f"--ratio-for {pat}={r}: the ratio must be in [0, 1)")
        out[str(pat)] = v
    return out


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

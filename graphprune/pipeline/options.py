"""The options of one prune, checked in one place, and what they imply."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..analysis.build import ALL_KINDS, KINDS
from ..calibration.checks import MAX_RANDOM_SAMPLES
from ..calibration.text import MAX_CALIB_TOKENS
from ..criteria import CRITERIA
from ..errors import UserError
from ..ir.inputs import parse_input_shapes
from ..runtime.session import resolve_provider

CALIB_CRITERIA = ("wanda", "flap", "obspa", "amp", "lrp")  # read calibration samples
STATS_CRITERIA = ("wanda", "flap", "obspa", "amp")  # read consumer statistics
GRAM_CRITERIA = ("obspa", "amp")  # read the channel Gram matrices (E[x xᵀ]), not only diagonals
COMPENSATIONS = ("flap", "obspa")
CORRECTIONS = ("meanvar", "mean")
ALLOCATIONS = ("measured", "obs")  # how allocation's error curves are made


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
    # values of inputs that need real ones ({name: value} or "sr=16000"), and real inputs for
    # every ONNX Runtime run (a .npz path or a dict of arrays; by default the --calib arrays):
    # see graphprune.ir.input_sizes
    input_values: object = None
    feeds: object = None
    # block-quantized weights (MatMulNBits): their contraction axis loses single positions and
    # the blocks left are quantized again; False: only whole quantization blocks go (exact)
    requantize: bool = True
    # the accuracy levers (see graphprune.transforms.reconstruct / correct / allocate); None:
    # the default (`reconstructing`, `correction_mode`, `allocating` below say what it is)
    reconstruct: object = None  # refit consumers in graph order on the partly pruned model
    correct: object = None  # "meanvar" | "mean" | "none": per-channel statistics correction
    allocate: object = None  # widths from error curves for target_params: measured | obs
    rotate: object = None  # residual stream rotated to its principal axes (hidden size)

    def check(self) -> None:
        if isinstance(self.dims, str):
            self.dims = tuple(d.strip() for d in self.dims.split(",") if d.strip())
        bad = [d for d in self.dims if d not in ALL_KINDS]
        if bad or not self.dims:
            raise UserError(f"--dims takes a comma list of {','.join(ALL_KINDS)}; got "
                            f"{bad or 'nothing'}")
        if "heads" in self.dims and "head_dims" in self.dims:
            raise UserError("--dims: heads and head_dims exclude each other (a head's features "
                            "either go as a whole head or position by position); prune one, "
                            "then the other in a second run")
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
        if isinstance(self.calib, (int, np.integer)) and not isinstance(self.calib, bool) \
                and not 1 <= self.calib <= MAX_RANDOM_SAMPLES:
            raise UserError(f"--calib-random must be in [1, {MAX_RANDOM_SAMPLES}], got "
                            f"{self.calib}")
        if isinstance(self.calib, (float, bool)):
            raise UserError(f"calib takes a file, a folder, arrays or a whole number of random "
                            f"samples, got {self.calib!r}")
        if not 2 <= self.seq_len <= MAX_CALIB_TOKENS:
            raise UserError(f"--seq-len must be in [2, {MAX_CALIB_TOKENS}], got {self.seq_len}")
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
        check_levers(self)
        if self.steps > 1 and (compensation_mode(self) is None or not self.has_calibration):
            raise UserError("--steps needs compensation on calibration data (obspa or flap "
                            "with --calib/--calib-random/--calib-text): without it, pruning "
                            "in steps measured worse than in one shot (README, Iterative "
                            "pruning)")

        self.input_values = parse_input_values(self.input_values)

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


def check_levers(opts: PruneOptions) -> None:
    """reconstruct / correct / allocate: known values, and what each needs."""
    if opts.reconstruct not in (None, True, False):
        raise UserError(f"reconstruct takes True or False, got {opts.reconstruct!r}")
    if opts.rotate not in (None, True, False):
        raise UserError(f"rotate takes True or False, got {opts.rotate!r}")
    if opts.correct not in (None, True, False, "none", *CORRECTIONS):
        raise UserError(f"correct takes meanvar, mean or none, got {opts.correct!r}")
    if opts.allocate not in (None, True, False, *ALLOCATIONS, "none"):
        raise UserError(f"allocate takes measured, obs or none, got {opts.allocate!r}")
    if opts.rotate and "hidden" not in opts.dims:
        raise UserError("--rotate turns the residual stream for hidden-size pruning: add hidden "
                        "to --dims")
    explicit = [f for f, v in (("--reconstruct", opts.reconstruct is True),
                               ("--rotate", opts.rotate is True),
                               ("--correct", opts.correct not in (None, False, "none")))
                if v]
    if explicit and not opts.has_calibration:
        verb = "need" if len(explicit) > 1 else "needs"
        raise UserError(f"{' and '.join(explicit)} {verb} calibration data (--calib, "
                        "--calib-random or --calib-text)")
    if opts.allocate == "measured" and not opts.has_calibration:
        raise UserError("--allocate-by measured needs calibration data (--calib, --calib-random "
                        "or --calib-text)")
    if opts.allocate in (True, *ALLOCATIONS):
        if opts.target_params is None:
            raise UserError("--allocate needs a parameter target (--target-params)")
        given = [f for f, v in (("--global-rank", opts.global_rank),
                                ("--ratio-for", bool(opts.ratio_for)),
                                ("--plan", opts.plan is not None)) if v]
        if given:
            raise UserError(f"--allocate sets every width itself; it cannot be combined with "
                            f"{', '.join(given)}")


def reconstructing(opts: PruneOptions) -> bool:
    """Sequential reconstruction (replaces the one-shot compensation): on by default when
    calibration arrays (`--calib`: the model's own inputs) reach a data-aware criterion (or
    compensation is asked for), unless compensation is switched off or bias-only.

    Not by default on `--calib-text`: a text corpus is rarely the text the model will see, and
    the refit follows the calibration text. On SmolLM2-135M calibrated on docstrings and
    measured on package descriptions it was ruinous at -30 % with uniform widths (flap
    perplexity 198 -> 1,493), and after the default measured allocation it adds little (-20 %:
    24.1 -> 23.9, -30 %: 40.7 -> 39.3) for minutes of work; `--reconstruct` asks for it."""
    if opts.reconstruct is not None:
        return bool(opts.reconstruct)
    aware = (opts.criterion in CALIB_CRITERIA or callable(opts.criterion)
             or opts.compensate in (True, "obspa"))
    return (opts.calib is not None and aware
            and opts.compensate in (None, True, "obspa"))


def rotating(opts: PruneOptions) -> bool:
    """The residual-stream rotation (`transforms.rotate`): only where the hidden size is
    pruned, and off unless asked for."""
    return bool(opts.rotate) and "hidden" in opts.dims


def correction_mode(opts: PruneOptions) -> str | None:
    """Statistics correction: off unless asked for (after reconstruction it measured small
    and mixed gains, and a large loss on the bundled DenseNet; see README)."""
    c = opts.correct
    if c is None or c is False or c == "none":
        return None
    return "meanvar" if c is True else c


def allocating(opts: PruneOptions) -> bool:
    """Widths from measured sensitivity: by default for --target-params (uniform selection
    otherwise), unless widths are ranked globally, fixed per pattern or by a plan;
    `--allocate` asks for it, `--no-allocate` keeps uniform widths."""
    a = opts.allocate
    if a is not None:
        return a in (True, *ALLOCATIONS)
    return (opts.target_params is not None and not opts.global_rank and not opts.ratio_for
            and opts.plan is None)


def allocation_method(opts: PruneOptions) -> str | None:
    """How allocation's error curves are made (None: no allocation).

    "measured" (`transforms.sensitivity`: the model's outputs with each group cut at a few
    widths) by default with `--calib-text`: on SmolLM2-135M the layer-wise curves chose widths
    far worse than uniform ones (flap perplexity at -20 % of the parameters: uniform 30.6,
    layer-wise 63.3 with amp), measured ones better (24.1). "obs" (`transforms.allocate`:
    the layer-wise error after the least-squares refit) otherwise: it needs no extra runs of
    the model, works data-free, and is what the CNN and encoder numbers in README used."""
    if not allocating(opts):
        return None
    if opts.allocate in ALLOCATIONS:
        return opts.allocate
    return "measured" if opts.calib_text is not None else "obs"


def check_gate_limits(max_drop=None, min_speedup=None) -> None:
    """The CI gates' limits: `max_drop` a finite number >= 0 (a drop is 1 - top-1 agreement or
    1 - cosine), `min_speedup` a finite number > 0. NaN, infinities and negative limits would
    make a gate pass or fail whatever is measured."""
    if max_drop is not None and not (_finite_in(max_drop, 0.0, math.inf)):
        raise UserError(f"--max-drop must be a finite number >= 0 (a fidelity drop), got "
                        f"{max_drop}")
    if min_speedup is not None and not (_finite_in(min_speedup, 0.0, math.inf)
                                        and float(min_speedup) > 0):
        raise UserError(f"--min-speedup must be a finite number > 0, got {min_speedup}")


def parse_input_values(spec) -> dict[str, object] | None:
    """`sr=16000,lang=3` (or a dict of values) as {name: value}."""
    if spec is None or isinstance(spec, dict) and not spec:
        return None
    if isinstance(spec, dict):
        return dict(spec)
    out = {}
    for part in _parts(spec):
        name, value = _split(part, "=", "--input-values", "NAME=VALUE")
        try:
            out[name] = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise UserError(f"--input-values: the value of {name!r} must be a number, got "
                            f"{value!r}") from None
    return out


def _parts(spec) -> list[str]:
    parts = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    return [p.strip() for p in parts if p and p.strip()]


def _split(part: str, sep: str, flag: str, form: str) -> tuple[str, str]:
    name, found, rest = part.rpartition(sep)
    if not found or not name:
        raise UserError(f"{flag} takes {form}[,...]; got {part!r}")
    return name.strip(), rest.strip()

"""The one state every stage of a prune reads and extends."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import onnx

from ..analysis.graph import DependencyGraph
from ..calibration.data import Calibration
from ..calibration.stats import CalibContext, Runner
from ..ir import GraphView
from ..ir.input_sizes import InputPlan
from ..ir.cache import IoChanges
from ..ir.storage import WeightStore
from ..transforms.select import Plan
from .options import PruneOptions

PHASES = ("load", "depth", "rotate", "analyze", "calibrate", "score", "select", "compensate",
          "rewrite", "validate", "write")


@dataclass
class Source:
    """The input as loaded: `work` is what the stages edit (a copy when given a ModelProto),
    `original` what a reference run loads (the file when there is one)."""

    work: onnx.ModelProto
    original: onnx.ModelProto | str
    path: str | None
    in_bytes: int
    store: WeightStore | None  # weights left on disk (None: all in memory)
    files: list = field(default_factory=list)  # the external data files the input reads

    @property
    def lazy(self) -> bool:
        return self.store is not None

    @property
    def external(self) -> bool:
        """The input keeps weights in external data files (so will the output)."""
        return bool(self.files)


@dataclass
class PruneState:
    """Everything a prune knows so far. Each stage declares the fields it needs and the ones
    it ensures (see `graphprune.pipeline.pipeline.PIPELINE`)."""

    input: object  # a path or a ModelProto, as given
    options: PruneOptions
    runner: Runner
    in_memory: bool = False  # load every weight (passes run the edited model from memory)
    defer_validation: bool = False  # validate when the result is written, from its files
    progress: Callable[[str], None] | None = None
    source: Source | None = None
    inputs: InputPlan | None = None  # sizes and values of the graph inputs for every run
    reference: object = None  # the original's outputs on the validation inputs (a Reference)
    copies: dict | None = None  # untied constant copy -> original
    view: GraphView | None = None
    before: dict | None = None  # {"params", "macs"} of the input
    calibration: Calibration | None = None
    blocks: list = field(default_factory=list)
    graph: DependencyGraph | None = None
    calib_ctx: CalibContext | None = None
    scores: dict | None = None
    plan: Plan | None = None
    allocation: str | None = None  # the error curves allocation used: "measured" | "obs"
    rotation: dict | None = None  # the residual-stream rotation's summary
    compensation: dict | None = None
    correction: dict | None = None  # the statistics correction's summary (a pass of its own)
    original_model: onnx.ModelProto | None = None  # before compensation, for the correction
    counts: dict | None = None
    shapes_after: dict | None = None
    io: IoChanges | None = None  # graph inputs/outputs changed (KV-cache heads, dropped pairs)
    graph_io: list = field(default_factory=list)  # the input's (name, "input"|"output") pairs
    after: dict | None = None
    fidelity: dict | None = None
    report: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)
    input_types: dict = field(default_factory=dict)  # inputs' own types (--input-shapes)
    fingerprint: str | None = None  # of the input graph (plans name the model they fit)
    step: int = 1  # iterative pruning: this step of options.steps
    origin: dict | None = None  # group id -> its units before the first step (steps > 1)

    def spent(self, phase: str, seconds: float) -> None:
        self.timings[phase] = round(self.timings.get(phase, 0.0) + seconds, 4)


class timed:
    """Adds the time spent inside the block to `state.timings[phase]`."""

    def __init__(self, state: PruneState, phase: str):
        self.state, self.phase = state, phase

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.state.spent(self.phase, time.perf_counter() - self.t0)

"""The pipeline, declared in one place, and the Python API over it.

    read → reference → prepare → calibration → depth → rotate → analyze → statistics → score
         → select
         → reconstruct | (snapshot →) compensate (→ correct) → rewrite → cost → validate
         → report                                                     (then PruneResult.save)

Each stage is a function over one `PruneState` (`graphprune.pipeline.stages`) that declares the
state fields it needs and the ones it ensures; the runner checks both, so a stage that forgets
its job fails loudly where it happened, and a stage that is skipped (its condition is false)
leaves its fields unset. `prune()` and `analyze_model()` are the Python API; the CLI is a thin
layer over them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..analysis.build import KINDS, analyze as analyze_graph
from ..errors import UserError
from ..ir import WEIGHTS
from ..runtime.isolate import Pending
from ..runtime.taps import TapRunner
from ..transforms.untie import untie_shared_constants
from . import levers, plans, stages as s
from .options import PruneOptions
from .report import build_report
from .result import PruneResult
from .state import PruneState, timed


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[PruneState], None]
    needs: tuple[str, ...] = ()
    ensures: tuple[str, ...] = ()
    when: Callable[[PruneState], bool] | None = None
    phase: str = ""  # the timing bucket of the report (default: the stage's name)


PIPELINE: tuple[Stage, ...] = (
    Stage("read", s.read, ensures=("source", "inputs"), phase="load"),
    Stage("reference", s.reference, ("source",), ("reference",), s.validating, "validate"),
    Stage("prepare", s.prepare, ("source",), ("view", "before", "copies"), phase="load"),
    Stage("calibration", s.load_calibration, ("source",), ("calibration",), s.calibrating,
          "calibrate"),
    Stage("depth", s.drop_blocks, ("view",), ("blocks", "view"), s.dropping_blocks),
    Stage("rotate", levers.rotate, ("view", "calibration"), ("rotation", "view"),
          levers.rotating_now),
    Stage("analyze", s.analyze, ("view",), ("graph",)),
    Stage("statistics", s.statistics, ("graph",), ("calib_ctx",), s.measuring_statistics,
          "calibrate"),
    Stage("score", s.score, ("graph",), ("scores",)),
    Stage("select", levers.select, ("graph", "scores", "before"), ("plan",)),
    Stage("reconstruct", levers.reconstruct, ("plan", "calib_ctx"), ("compensation",),
          levers.reconstructing_now, "compensate"),
    Stage("snapshot", levers.snapshot, ("plan",), ("original_model",), levers.correcting_alone,
          "compensate"),
    Stage("compensate", s.compensate, ("plan", "calib_ctx"), ("compensation",), s.compensating),
    Stage("correct", levers.correct, ("plan", "original_model", "calibration"), ("correction",),
          levers.correcting_alone, "compensate"),
    Stage("rewrite", s.rewrite, ("plan", "copies"), ("counts", "shapes_after")),
    Stage("steps", lambda st: _more_steps(st), ("plan",), ("plan",), s.iterating, "select"),
    Stage("cost", s.cost_after, ("shapes_after",), ("after",), phase="validate"),
    Stage("validate", s.validate, ("reference",), ("fidelity",), s.validating_now),
    Stage("report", lambda st: setattr(st, "report", build_report(st)),
          ("graph", "plan", "before", "after", "counts"), ("report",), phase="write"),
)


# one more round of iterative pruning (--steps): the partly pruned model analyzed, scored
# and pruned again
STEP = tuple(st for st in PIPELINE if st.name in ("analyze", "statistics", "score", "select",
                                                 "reconstruct", "snapshot", "compensate",
                                                 "correct", "rewrite"))


def _more_steps(state: PruneState) -> None:
    """Steps 2..N of iterative pruning. Each step re-analyzes and re-scores the model the
    previous one wrote, and prunes towards this step's share of the target (reached on the
    original widths, parameters or MACs). The report and the plan then describe the
    original's groups: the units each keeps after all steps."""
    first_graph, first_plan, first_scores = state.graph, state.plan, state.scores
    kept = s.compose_positions({}, first_graph, first_plan)
    counts = dict(state.counts)
    for k in range(2, state.options.steps + 1):
        state.step = k
        s.reprepare(state)
        for stage in STEP:
            if stage.when is not None and not stage.when(state):
                continue
            with timed(state, stage.phase or stage.name):
                stage.run(state)
            if stage.name == "analyze":
                state.origin = s.origin_sizes(state.graph, first_graph)
        kept = s.compose_positions(kept, state.graph, state.plan)
        for key, v in state.counts.items():
            counts[key] = counts.get(key, 0) + v if key != "constants_retied" else v
    state.counts = counts
    state.graph, state.scores = first_graph, first_scores
    state.plan = s.plan_on(first_graph, kept)


class StageError(AssertionError):
    """A stage ran without what it needs, or did not produce what it ensures: a bug."""


def run_stages(state: PruneState, stages: tuple[Stage, ...] = PIPELINE) -> PruneState:
    """Run `stages` in order over `state` (the weights the state's source keeps on disk are
    readable by every stage while they run)."""
    try:
        _run(state, stages)
    except BaseException as e:
        try:
            _input_first(state, e)
        finally:
            if isinstance(state.reference, Pending):
                state.reference.cancel()
        raise
    return state


def _input_first(state: PruneState, error: BaseException) -> None:
    """When a stage fails while the original's reference run is still pending, the input's own
    fault (ONNX Runtime cannot load, run or survive it) is the error to report."""
    if not isinstance(state.reference, Pending) or isinstance(error, KeyboardInterrupt):
        return
    try:
        state.reference.result()
    except UserError as refused:
        raise refused from error
    except BaseException:  # noqa: BLE001  (the stage's own error stands)
        pass


def _run(state: PruneState, stages: tuple[Stage, ...]) -> None:
    token = None
    try:
        for stage in stages:
            if stage.when is not None and not stage.when(state):
                continue
            missing = [f for f in stage.needs if getattr(state, f) is None]
            if missing:
                raise StageError(f"stage {stage.name} needs {missing}")
            if state.progress:
                state.progress(stage.name)
            with timed(state, stage.phase or stage.name):
                stage.run(state)
            if stage.name == "read" and token is None:
                token = WEIGHTS.set(state.source.store)
            absent = [f for f in stage.ensures if getattr(state, f) is None]
            if absent:
                raise StageError(f"stage {stage.name} did not produce {absent}")
    finally:
        if token is not None:
            WEIGHTS.reset(token)


def plan_document(state: PruneState) -> dict:
    """The run's plan as a JSON-ready document (see `graphprune.pipeline.plans`)."""
    options = {"criterion": state.options.criterion_name, **(state.report or {}).get("target", {})}
    return plans.document(state.graph, state.plan, s.input_fingerprint(state), options,
                          state.blocks, state.source.path)


def result_of(state: PruneState) -> PruneResult:
    src = state.source
    pending = state.reference if (state.options.validate and state.defer_validation) else None
    return PruneResult(src.work, state.report, state.graph, state.plan, store=src.store,
                       pending=pending, source=src.path, external=src.external,
                       scores=state.scores, source_files=list(src.files),
                       copies=dict(state.copies or {}),
                       plan_source=lambda: plan_document(state),
                       provider=state.options.provider, inputs=state.inputs, io=state.io)


def prune(model, ratio: float = 0.3, criterion: str = "magnitude",
          progress: Callable[[str], None] | None = None, in_memory: bool = False,
          defer_validation: bool = False, **options) -> PruneResult:
    """Prune a model (path or ModelProto). Returns the pruned ModelProto and the report.

    Options: see `PruneOptions` (global_rank, round_to, min_keep, protect, seed, validate,
    dims, drop_blocks, calib, labels, compensate, calib_text, tokenizer, seq_len,
    target_params, input_shapes, input_values, feeds, requantize). The input model object is
    never modified. A model folder (ONNX Runtime GenAI, Optimum) means its model file;
    `PruneResult.save_folder` writes the pruned folder.

    Weights a model file keeps in external data stay on disk: passes read them one tensor at a
    time, ONNX Runtime (calibration, block scoring, validation) reads them from the data files,
    and only the tensors that change are held, as arrays (see `PruneResult`). `in_memory`
    loads every weight into the ModelProto instead (models up to 2 GB). `defer_validation`
    validates the model when `PruneResult.save` writes it, from the written files (the model is
    serialized once, for the file, and a big model's rewritten arrays are released first; the
    command line does this when it does not measure the result).
    """
    opts = PruneOptions(ratio=ratio, criterion=criterion, **options)
    opts.check()
    if isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
        from .folder import model_in  # a model folder (GenAI, Optimum): its model file

        model = str(model_in(Path(model)))
    state = PruneState(model, opts, TapRunner(provider=opts.provider), progress=progress,
                       in_memory=in_memory, defer_validation=defer_validation)
    return result_of(run_stages(state))


def plan(model, ratio: float = 0.3, criterion="magnitude",
         progress: Callable[[str], None] | None = None, **options) -> plans.PrunePlan:
    """The plan `prune` would apply, without rewriting anything: every group with the units it
    would keep (editable: `plan[name].keep = [...]`, `plan[name].keep_top(n)`) and the
    criterion's unit scores. `graphprune.apply(model, plan)` applies it; `plan.save(path)`
    writes it as --save-plan does. Options: those of `prune`."""
    opts = PruneOptions(ratio=ratio, criterion=criterion, **{**options, "validate": False})
    opts.check()
    state = PruneState(model, opts, TapRunner(provider=opts.provider), progress=progress)
    run_stages(state, PIPELINE[:next(k for k, st in enumerate(PIPELINE)
                                     if st.name == "select") + 1])
    doc = plans.document(state.graph, state.plan, s.input_fingerprint(state),
                         {"criterion": opts.criterion_name, "ratio": opts.ratio},
                         state.blocks, state.source.path)
    return plans.PrunePlan(doc, plans.unit_scores(state.graph, state.scores))


def apply(model, plan, criterion=None, **options) -> PruneResult:
    """Prune `model` by a plan (a `PrunePlan`, a plan dict or a --save-plan file) instead of
    scoring and selecting; the criterion named in the plan sets the default compensation.
    Options: those of `prune` that do not select (calibration, compensate, validate, ...)."""
    return prune(model, criterion=criterion, plan=plan, **options)


def analyze_model(model, progress=None, dims=KINDS, input_shapes=None, **inputs):
    """Dependency groups of a model (path or ModelProto), without changing it. Returns the
    view the analysis ran on and the dependency graph. `inputs`: `input_values` and `feeds`
    as `prune` takes them (for the runs that observe shapes)."""
    opts = PruneOptions(validate=False, input_shapes=input_shapes, **inputs)
    opts.check()
    state = PruneState(model, opts, TapRunner())
    run_stages(state, PIPELINE[:1])
    token = WEIGHTS.set(state.source.store)
    try:
        work = state.source.work
        untie_shared_constants(work)
        view = s.model_view(work, state.inputs)
        return view, analyze_graph(view, progress=progress, dims=dims)
    finally:
        WEIGHTS.reset(token)

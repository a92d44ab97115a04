"""The stages of the accuracy levers: sequential reconstruction, statistics correction and
sensitivity-based allocation (declared in `graphprune.pipeline.pipeline.PIPELINE`; what is on
by default is decided in `graphprune.pipeline.options`)."""
from __future__ import annotations

import onnx

from ..analysis.build import analyze as analyze_graph
from ..transforms import rotate as rotation
from ..transforms.allocate import MAX_REMOVE, allocate, planned_biases
from ..transforms.correct import correct as correct_plan
from ..transforms.reconstruct import reconstruct as reconstruct_plan
from ..transforms.sensitivity import measured_curves, probe_runs
from . import stages as s
from .options import (allocating, allocation_method, compensation_mode, correction_mode,
                      reconstructing, rotating)
from .state import PruneState


def rotate(state: PruneState) -> None:
    """The residual stream turned to the principal axes of its normalized calibration
    activations (`transforms.rotate`), so that hidden-size pruning removes its least used
    directions; the model is left as it is, with the reason in the report, where an op on
    the stream does not commute with a rotation."""
    dg = analyze_graph(state.view, dims=("hidden",))
    found, why = rotation.find_rotation(state.view, dg, state.copies or ())
    if found is None:
        state.rotation = {"applied": False, "reason": why}
        return
    if state.progress:
        state.progress(f"rotate: principal axes of the residual stream at "
                       f"{len(found.scales)} norms")
    cov = rotation.stream_covariance(state.source.work, found, state.calibration.feeds,
                                     state.runner)
    state.rotation = rotation.rotate(state.view, found, rotation.principal_axes(cov))
    state.view = s.model_view(state.source.work, state.inputs)


def select(state: PruneState) -> None:
    """Widths from measured sensitivity for --target-params (`transforms.allocate`), else the
    selection of `stages.select`."""
    if not allocating(state.options):
        s.select(state)
        return
    opts, dg, ctx = state.options, state.graph, state.calib_ctx
    with_data = ctx is not None and ctx.calibration is not None
    added = planned_biases(dg, ctx, compensation_mode(opts) if ctx and ctx.stats else None,
                           reconstructing(opts) and with_data,
                           bool(correction_mode(opts)) and with_data)
    target = s.budget(state, "params", opts.target_params, s.model_params(state))
    cap = MAX_REMOVE if opts.max_ratio is None else min(MAX_REMOVE, opts.max_ratio)
    measure = _measurement(state) if allocation_method(opts) == "measured" and with_data \
        else None
    state.plan, state.allocation = allocate(dg, state.scores, ctx, target,
                                            round_to=opts.round_to, min_keep=opts.min_keep,
                                            added=added, max_remove=cap, measure=measure)
    if measure is not None and state.allocation == "obs" and ctx is not None:
        ctx.notes.append("allocation: some group is read by a weight a run cannot swap (a "
                         "quantized or Constant-node weight); widths from layer-wise error "
                         "curves (obs) instead of measured ones")


def _measurement(state: PruneState):
    """Allocation's error curves measured at the model's outputs (`transforms.sensitivity`)."""
    def measure(groups, orders, cands, reach):
        if state.progress:
            state.progress(f"select: {probe_runs(groups, reach)} runs of the model measure the "
                           f"widths of {len(groups)} groups")
        return measured_curves(state.graph, groups, orders, cands, state.runner,
                               state.calib_ctx.calibration.feeds,
                               state.options.calib_text is not None, reach)
    return measure


def reconstruct(state: PruneState) -> None:
    """Refit the consumers in graph order on the partly pruned model's activations (instead of
    the one-shot compensation), with the statistics correction interleaved when it is on."""
    state.compensation = reconstruct_plan(state.view, state.graph, state.plan, state.calib_ctx,
                                          correct=correction_mode(state.options))


def snapshot(state: PruneState) -> None:
    """The model before compensation: what the statistics correction matches."""
    state.original_model = onnx.ModelProto()
    state.original_model.CopyFrom(state.source.work)


def correct(state: PruneState) -> None:
    """Per-channel mean/variance of every changed layer matched to the original's."""
    state.correction = correct_plan(state.view, state.graph, state.plan, state.original_model,
                                    state.calibration.feeds, state.runner,
                                    correction_mode(state.options))
    state.original_model = None


# ------------------------------------------------------------------------------ conditions
def _has_samples(state: PruneState) -> bool:
    ctx = state.calib_ctx
    return ctx is not None and ctx.calibration is not None and bool(state.plan.keep)


def reconstructing_now(state: PruneState) -> bool:
    return reconstructing(state.options) and _has_samples(state)


def rotating_now(state: PruneState) -> bool:
    return rotating(state.options) and state.calibration is not None


def correcting_alone(state: PruneState) -> bool:
    """Correction as its own pass (after compensation, when there is no reconstruction)."""
    return (bool(correction_mode(state.options)) and not reconstructing(state.options)
            and _has_samples(state))

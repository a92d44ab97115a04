"""The stages of a prune: one function each over the `PruneState` (the order and what each needs
and ensures are declared in `graphprune.pipeline.pipeline.PIPELINE`). Stages are the only
callers of `graphprune.runtime`; everything below them is handed what it needs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..analysis.build import analyze as analyze_graph
from ..analysis.cost import MacsModel, count_macs, count_params, unit_param_costs
from ..calibration.data import load_calibration as load_samples, reference_feeds
from ..calibration.stats import build_context
from ..calibration.text import text_calibration
from ..criteria import CRITERIA
from ..criteria.custom import from_callable
from ..errors import UserError
from ..ir import GraphView
from ..ir.fold import static_view, view_at
from ..ir.input_sizes import InputPlan, plan_inputs
from ..ir.inputs import fix_input_shapes, restore_input_shapes
from ..ir.cache import IoChanges
from ..ir.inputs import input_specs
from ..ir.load import check_tensor_storage, open_model
from ..ir.sanity import check_graph_sanity
from ..ir.shapes import infer_shapes
from ..ir.storage import TWO_GB, approx_bytes
from ..runtime import validate as runtime_validate
from ..runtime.isolate import Pending
from ..runtime.probe import probe_shapes
from ..transforms import depth
from ..transforms.cache_io import drop_dead_cache
from ..transforms.compensate import compensate as compensate_plan
from ..transforms.rewrite import (dead_nodes, drop_newly_dead, keep_positions, resize_graph_io,
                                  rewrite as rewrite_plan)
from ..transforms.select import (Target, apply_protect, group_ratios, params_measure,
                                 select as select_units)
from ..transforms.untie import retie_identical, untie_shared_constants
from .plans import fingerprint, plan_from
from .options import (CALIB_CRITERIA, GRAM_CRITERIA, STATS_CRITERIA, compensation_mode,
                      reconstructing)
from .state import PruneState, Source


def model_view(model: onnx.ModelProto, inputs: InputPlan | None = None) -> GraphView:
    """The model's view with every size that can be known: shape inference, folded shape
    computations, and sizes observed in ONNX Runtime where inference lost them (run at sizes
    and values `inputs` plans, by default planned from the graph)."""
    plan = inputs if inputs is not None else plan_inputs(model)
    return static_view(model, infer_shapes(model),
                       probe=lambda m, shapes: probe_shapes(m, shapes, plan))


def input_plan(model: onnx.ModelProto, opts) -> InputPlan:
    """Sizes and values of the graph inputs: --input-shapes, --input-values, the given data
    (`feeds`, else the --calib arrays), sizes the graph fixes, guesses (graphprune.ir.
    input_sizes)."""
    data = opts.feeds if opts.feeds is not None else opts.calib
    samples = reference_feeds(data, model) if data is not None else None
    return plan_inputs(model, shapes=opts.input_shapes, values=opts.input_values,
                       samples=samples)


# ------------------------------------------------------------------------------ stages
def read(state: PruneState) -> None:
    """The model to work on. From a file, large external weights stay on disk: every stage,
    ONNX Runtime's runs included, reads them there. `in_memory` loads them into the proto
    instead, for models a ModelProto can hold (up to 2 GB)."""
    model = state.input
    if isinstance(model, onnx.ModelProto):
        check_tensor_storage(model, None)
        if not model.graph.node:
            raise UserError("the model has no graph nodes")
        work = onnx.ModelProto()
        work.CopyFrom(model)
        check_graph_sanity(work)
        state.source = Source(work, model, None, approx_bytes(model), None)
        _fix_inputs(state)
        state.inputs = input_plan(work, state.options)
        return
    path = Path(model)
    work, store, files = open_model(path)
    size = path.stat().st_size + sum(f.stat().st_size for f in files)
    if state.in_memory and store is not None and size <= TWO_GB:
        store.materialize(work)
        store = None
    state.source = Source(work, str(path), str(path), size, store, list(files))
    _fix_inputs(state)
    state.inputs = input_plan(work, state.options)


def _fix_inputs(state: PruneState) -> None:
    """--input-shapes: static dims for the run (put back by the rewrite stage)."""
    if state.options.input_shapes:
        state.input_types = fix_input_shapes(state.source.work, state.options.input_shapes)


def reference(state: PruneState) -> None:
    """The original's outputs on random inputs, computed in a child process while the other
    stages work (the validate stage collects them; an input ONNX Runtime cannot run is refused
    then, before anything is written). A big model's reference run is waited for here, so the
    original's session is gone before anything else takes memory."""
    src, opts = state.source, state.options
    pending = runtime_validate.start_reference(src.original, seed=opts.seed, low_memory=src.lazy,
                                               plan=state.inputs, shapes=opts.input_shapes,
                                               provider=opts.provider,
                                               specs=input_specs(src.work))
    state.reference = pending.result() if src.lazy else pending


def prepare(state: PruneState) -> None:
    """Parameter count of the input, shared constants untied, shapes and folded values."""
    work = state.source.work
    state.graph_io = [(i.name, "input") for i in work.graph.input] + [
        (o.name, "output") for o in work.graph.output]
    view = GraphView(work)
    params = count_params(view)
    if state.options.plan is not None:  # compared with the plan's (else computed when asked)
        state.fingerprint = fingerprint(work)
    state.copies = untie_shared_constants(work, view)
    state.view = model_view(work, state.inputs)
    state.before = {"params": params, "macs": macs_at(work, state.inputs, state.view),
                    "ops": op_counts(work)}


def input_fingerprint(state: PruneState) -> str:
    """The input graph's fingerprint (plans name the model they fit). Hashing a model costs as
    much as writing it, so it is computed only when a plan is read or written: from the input
    as it was read (the work model has been untied and rewritten since)."""
    if state.fingerprint is None:
        original = state.source.original
        state.fingerprint = fingerprint(original if isinstance(original, onnx.ModelProto)
                                        else open_model(original)[0])
    return state.fingerprint


def load_calibration(state: PruneState) -> None:
    """The calibration samples: `calib` (npz, images, arrays, N random) or token windows of
    `calib_text` (see graphprune.calibration)."""
    opts, work = state.options, state.source.work
    if opts.calib_text is not None:
        cal = text_calibration(work, opts.calib_text, opts.tokenizer, opts.seq_len)
        state.calibration = load_samples(cal, work, labels=opts.labels)
    else:
        state.calibration = load_samples(opts.calib, work, preprocess=opts.preprocess,
                                         labels=opts.labels, seed=opts.seed)


def drop_blocks(state: PruneState) -> None:
    """Score residual blocks on the calibration samples (random inputs without them) and
    remove the `drop_blocks` least useful."""
    opts, work = state.options, state.source.work
    blocks = depth.find_residual_blocks(state.view)
    if opts.plan is not None:  # the blocks a plan names, without scoring
        names = set(opts.plan.get("blocks", []))
        missing = names - {b.add for b in blocks}
        if missing:
            raise UserError(f"the plan drops residual block(s) {sorted(missing)}, which this "
                            "model does not have")
        depth.drop_blocks(work, [b for b in blocks if b.add in names], len(names))
        state.view = model_view(work, state.inputs)
        state.blocks = blocks
        return
    if opts.drop_blocks > len(blocks):
        raise UserError(f"--drop-blocks {opts.drop_blocks}: the model has only {len(blocks)} "
                        "residual blocks")
    cal = state.calibration
    feeds = (cal.feeds if cal is not None
             else depth.calibration_feeds(work, state.view, seed=opts.seed))
    depth.score_blocks(work, blocks, feeds, state.runner)
    depth.drop_blocks(work, blocks, opts.drop_blocks)
    io = drop_dead_cache(work)  # a dropped attention block's KV-cache pair goes with it
    if io:
        state.io = io
        if cal is not None:  # the samples feed what the model now takes
            cal.feeds = io.apply(cal.feeds)
    state.view = model_view(work, state.inputs)
    state.blocks = blocks


def analyze(state: PruneState) -> None:
    opts = state.options
    state.graph = analyze_graph(state.view, dims=opts.dims, requantize=opts.requantize)
    apply_protect(state.graph, opts.protect, opts.protect_op, opts.allow_unmatched)


def statistics(state: PruneState) -> None:
    """Consumers and activation statistics for the data-aware criteria: measured on the
    calibration samples, else data-free for obspa; wanda/flap/amp without data fall back to
    magnitude (their notes say so)."""
    opts, cal = state.options, state.calibration
    # consumer statistics serve the statistics-based criteria and compensation; lrp runs the
    # model itself, magnitude/random need nothing (the samples may be there for depth scoring)
    mode = compensation_mode(opts)
    custom = callable(opts.criterion)  # a criterion function may read any statistic
    stats = opts.criterion in STATS_CRITERIA or custom or mode is not None
    gram = custom or opts.criterion in GRAM_CRITERIA or mode == "obspa"
    ctx = build_context(state.graph, cal, state.runner, data_free=opts.criterion == "obspa",
                        stats=stats, gram=gram)
    ctx.source = cal.source if cal is not None else (
        "data-free" if opts.criterion == "obspa" else "none")
    ctx.samples = cal.n if cal is not None else 0
    if cal is None and opts.criterion in ("wanda", "flap", "amp"):
        ctx.notes.append(f"{opts.criterion}: no calibration data; every group is scored by "
                         "magnitude")
    state.calib_ctx = ctx


def score(state: PruneState) -> None:
    opts = state.options
    if opts.plan is not None:  # a plan replaces scoring and selection
        state.scores = {}
        return
    extra = {"calib_ctx": state.calib_ctx} if state.calib_ctx is not None else {}
    fn = from_callable(opts.criterion) if callable(opts.criterion) else CRITERIA[opts.criterion]
    state.scores = fn(state.graph, seed=opts.seed, **extra)


def select(state: PruneState) -> None:
    if state.options.plan is not None:
        state.plan = plan_from(state.options.plan, state.graph, input_fingerprint(state))
        return
    state.plan = select_units(state.graph, state.scores, target(state))


def target(state: PruneState) -> Target:
    """The selection target of this run (of this step, when pruning in steps)."""
    opts, dg = state.options, state.graph
    t = Target(ratio=opts.ratio, global_rank=opts.global_rank, round_to=opts.round_to,
               min_keep=opts.min_keep, max_ratio=opts.max_ratio,
               ratio_for=group_ratios(dg, opts.ratio_for, opts.allow_unmatched),
               origin=state.origin or {}, fraction=state.step / opts.steps)
    if opts.target_params is not None:
        t.budget = budget(state, "params", opts.target_params, model_params(state))
        t.costs = lambda g: unit_param_costs(dg, g)
        t.measure = params_measure(dg, t.costs)
    elif opts.target_macs is not None:  # at the sizes the report counts MACs at
        model = MacsModel(dg, view_at(state.source.work, state.inputs.cost_shapes(),
                                      fallback=state.view))
        t.budget = budget(state, "macs", opts.target_macs, model.total)
        t.costs, t.measure, t.refine = model.unit_costs, model.removed, True
    return t


def model_params(state: PruneState) -> int:
    """Parameters of the model as it stands, untied copies not counted (they are tied back
    when they stay equal)."""
    view = state.view
    extra = sum(view.consts[c].numel for c in state.copies or () if c in view.consts)
    return count_params(view) - extra


def budget(state: PruneState, key: str, fraction: float, now: float) -> float:
    """What width pruning still has to remove (parameters or MACs) to reach `fraction` of the
    input's by this step: blocks dropped by --drop-blocks and earlier steps already count."""
    before = state.before[key]
    return fraction * state.step / state.options.steps * before - (before - now)


def compensate(state: PruneState) -> None:
    state.compensation = compensate_plan(state.view, state.graph, state.plan, state.calib_ctx,
                                         compensation_mode(state.options))


def rewrite(state: PruneState) -> None:
    """Slice, fix every node, merge untied copies that stayed identical, and drop what the
    rewrite left unused (nodes and weights the input model already left unused stay)."""
    work = state.source.work
    dead = dead_nodes(work) if state.plan.keep else set()
    counts, shapes, resized = rewrite_plan(state.view, state.graph, state.plan)
    counts["constants_retied"] = retie_identical(work, state.copies, state.view)
    counts["unused_dropped"] = drop_newly_dead(work, dead) if state.plan.keep else 0
    restore_input_shapes(work, state.input_types)
    if resized and state.input_types:  # a cache input given --input-shapes keeps its new size
        resize_graph_io(work, {(n, a): pos for n, (a, pos) in resized.items()})
    state.counts, state.shapes_after = counts, shapes
    if resized or state.io:  # a new object: a sweep's forks share the depth stage's one
        prev = state.io or IoChanges()
        kept = dict(prev.kept)
        for name, (axis, pos) in resized.items():  # a later --steps round: compose positions
            kept[name] = (axis, kept[name][1][pos] if name in kept else pos)
        state.io = IoChanges(kept=kept, removed=set(prev.removed), renamed=dict(prev.renamed))


def cost_after(state: PruneState) -> None:
    """Params and MACs after. When the reference run had to take other sizes for guessed dims
    (the planned ones were too small for the model), those sizes are adopted, and the MACs
    before are counted again at them."""
    work = state.source.work
    ref = state.reference
    if ref is not None:
        feeds = (ref.result() if isinstance(ref, Pending) else ref)[0]
        old = {k: list(v) for k, v in state.inputs.shapes.items()}
        state.inputs.adopt(feeds)
        if state.inputs.shapes != old:  # count the input again (the work model is pruned)
            original = state.source.original
            if not isinstance(original, onnx.ModelProto):
                original = onnx.load(original, load_external_data=False)
            state.before["macs"] = count_macs(view_at(original, state.inputs.cost_shapes()))
    view = GraphView(work, state.shapes_after)
    state.after = {"params": count_params(view), "macs": macs_at(work, state.inputs, view),
                   "ops": op_counts(work)}


def macs_at(model: onnx.ModelProto, plan: InputPlan, known: GraphView) -> int:
    """MACs at the plan's concrete input sizes (one sample; see `InputPlan.cost_shapes`), with
    the sizes `known` has where inference at those sizes finds none."""
    return count_macs(view_at(model, plan.cost_shapes(), fallback=known))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes per op type (domain-qualified outside the default domain), sorted by name."""
    counts: dict[str, int] = {}
    for n in model.graph.node:
        key = f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def validate(state: PruneState) -> None:
    """Checker, ONNX Runtime run and output signature of the pruned model, before anything is
    written (a model whose weights stay on disk runs from them and from the store's arrays;
    with `defer_validation` this happens at save time instead, see `PruneResult.save`)."""
    src = state.source
    state.fidelity = runtime_validate.validate(src.original, src.work, seed=state.options.seed,
                                               ref=state.reference, store=src.store,
                                               provider=state.options.provider, io=state.io)


# ------------------------------------------------------------------------------ steps
def reprepare(state: PruneState) -> None:
    """The model the previous step wrote, made ready for analysis again."""
    work = state.source.work
    if state.options.input_shapes:
        state.input_types = fix_input_shapes(work, state.options.input_shapes)
    state.copies = untie_shared_constants(work)
    state.view = model_view(work, state.inputs)


def origin_sizes(dg, first) -> dict[int, int]:
    """Group id -> units of the same group before the first step (found by a weight axis)."""
    out = {}
    for g in dg.groups:
        for m in g.members:
            gid = first.group_of.get((m.tensor, m.axis))
            if gid is not None:
                out[g.id] = first.groups[gid].n_units
                break
    return out


def compose_positions(kept: dict, dg, plan) -> dict:
    """Positions of the original tensors each axis keeps, after one more step's plan."""
    for dn, pos in keep_positions(dg, plan).items():
        before = kept.get(dn)
        kept[dn] = pos if before is None else before[pos]
    return kept


def plan_on(first, kept: dict):
    """The plan, on the first step's groups, that keeps what all steps kept."""
    from ..transforms.select import Plan

    plan = Plan()
    for g in first.prunable_groups():
        for dn, units in g.unit_of.items():
            if dn in kept and len(units):
                keep = np.unique(units[kept[dn]])
                if len(keep) < g.n_units:
                    plan.keep[g.id] = keep
                break
    return plan


# ------------------------------------------------------------------------------ conditions
def iterating(state: PruneState) -> bool:
    return state.options.steps > 1

def validating(state: PruneState) -> bool:
    return state.options.validate


def validating_now(state: PruneState) -> bool:
    """Validation in the validate stage (unless it is deferred to the written files)."""
    return state.options.validate and not state.defer_validation


def calibrating(state: PruneState) -> bool:
    return state.options.has_calibration


def dropping_blocks(state: PruneState) -> bool:
    plan = state.options.plan
    return bool(state.options.drop_blocks) or bool(plan is not None and plan.get("blocks"))


def measuring_statistics(state: PruneState) -> bool:
    return state.options.criterion in CALIB_CRITERIA or state.calibration is not None


def compensating(state: PruneState) -> bool:
    ctx = state.calib_ctx
    return (compensation_mode(state.options) is not None and ctx is not None and bool(ctx.stats)
            and bool(state.plan.keep) and not (reconstructing(state.options)
                                               and ctx.calibration is not None))


"""Validation: the pruned model must pass the ONNX checker, run in ONNX Runtime and produce
outputs with the same names, dtypes and shapes as the original on the same inputs.

The original's outputs (the *reference*) are computed once, before pruning starts: an input that
ONNX Runtime cannot load or run is refused up front (graphprune checks every pruned model in
ONNX Runtime, so it prunes only models ONNX Runtime runs), and for big models the original's
session is gone before the pruned model is loaded, so the two never share memory.

A pruned model whose weights stay on disk is validated the same way, before anything is
written: ONNX Runtime reads its unchanged weights from the input's data files and its rewritten
ones from the store's arrays, in place (see `graphprune.runtime.session`). Any model can instead
be validated from its written files (`validate_file`): ONNX Runtime from the path, the checker
on the same graph without its weight bytes, before the files are renamed into place.

Two exceptions, both reported: graph inputs/outputs that pruning changed on purpose (the head
axis of a KV cache, the cache pair of a dropped attention block: `io`, an
`graphprune.ir.cache.IoChanges`) are compared on what is left (the pruned model gets the
original's inputs sliced, dropped and renamed the same way); and a checker failure the original model already
shows (a converter's wrong value_info) is not the pruned model's fault: only what pruning made
worse is an error (`graphprune.ir.sanity.check_model_relative`).
"""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import UserError, ValidationError
from ..ir.cache import IoChanges
from ..ir.sanity import check_model_relative, first_line
from ..ir.input_sizes import InputPlan, plan_inputs
from ..ir.inputs import InputSpec, concrete_shapes, with_shapes
from ..ir.load import graph_of
from ..ir.shapes import inference_copy
from ..ir.storage import WeightStore
from .fidelity import cosine_fidelity
from .isolate import Pending, start
from .session import DEFAULT_PROVIDER, background_threads, run, session, session_specs

Reference = tuple[dict, dict]  # (feeds, outputs of the original)


FALLBACK_SIZES = (64, 16, 1, 224)  # other sizes for the guessed dims when the plan's fail

GIVE_INPUTS = ("give real inputs with --calib FILE.npz or --input-values NAME=VALUE, or sizes "
               "with --input-shapes NAME:D1xD2...")


def _feeds_for(original_sess, seed: int, plan: InputPlan | None = None,
               shapes: dict | None = None, specs: list[InputSpec] | None = None):
    """Feeds the original model accepts and its outputs on them: the given data when there is
    some (nothing else is tried), else the plan's sizes, then other sizes for the guessed dims
    (inputs named in `shapes` get those dims). `specs`: the model's `input_specs` (a KV
    cache's head sizes read from the weights) instead of the session's."""
    specs = with_shapes(specs or session_specs(original_sess), shapes)
    if plan is None:
        plan = InputPlan(shapes=concrete_shapes(specs, 1, 1),
                         free={s.name: [a for a, d in enumerate(s.shape)
                                        if not (isinstance(d, int) and d > 0)] for s in specs},
                         names={s.name: [d if isinstance(d, str) else None for d in s.shape]
                                for s in specs})
    if plan.samples:
        feeds = {**plan.feeds(specs, seed), **plan.samples}
        try:
            return feeds, run(original_sess, feeds)
        except Exception as e:
            raise UserError(f"the input model does not run in onnxruntime on the given inputs: "
                            f"{first_line(e)}") from e
    tries, last = [plan.shapes], None
    for dyn in FALLBACK_SIZES:
        sizes = plan.shapes_at(dynamic=dyn)
        if sizes not in tries:
            tries.append(sizes)
    for sizes in tries:
        feeds = plan.feeds(specs, seed, sizes)
        try:
            return feeds, run(original_sess, feeds)
        except Exception as e:  # the original rejects these sizes; try others
            last = e
    raise UserError(f"the input model does not run in onnxruntime on random inputs "
                    f"({GIVE_INPUTS}): {first_line(last)}")


def start_reference(original: onnx.ModelProto | str, seed: int = 0,
                    low_memory: bool = False, plan: InputPlan | None = None,
                    shapes: dict | None = None, provider: str = DEFAULT_PROVIDER,
                    specs: list[InputSpec] | None = None) -> Pending:
    """Start the original's reference run in a child process and return at once: the caller
    goes on (analysis, scoring, rewrite) while ONNX Runtime loads and runs the original.
    `plan` gives the input sizes and values (default: planned from the model's graph);
    `specs` (the model's `input_specs`) make feeds that keep the inputs' relations."""
    return start(_reference, original, seed, low_memory, plan, shapes, provider, specs,
                 fork=provider == DEFAULT_PROVIDER,
                 crash=lambda why: UserError(f"onnxruntime crashed ({why}) running the input "
                                             "model on random inputs; graphprune cannot "
                                             "validate a pruned version of it"))


def reference(original: onnx.ModelProto | str, seed: int = 0, low_memory: bool = False,
              original_sess=None, plan: InputPlan | None = None, shapes: dict | None = None,
              provider: str = DEFAULT_PROVIDER, specs: list[InputSpec] | None = None
              ) -> Reference:
    """Feeds (random, or the plan's data) and the original model's outputs on them;
    `UserError` when ORT cannot load or run the original (or crashes on it)."""
    if original_sess is not None:
        return _feeds_for(original_sess, seed, plan, shapes, specs)
    return start_reference(original, seed, low_memory, plan, shapes, provider, specs).result()


def _reference(original, seed: int, low_memory: bool, plan: InputPlan | None,
               shapes: dict | None = None, provider: str = DEFAULT_PROVIDER,
               specs=None) -> Reference:
    try:
        # one core is left to the parent, which analyzes while this runs
        sess = session(original, low_memory=low_memory, threads=background_threads(),
                       provider=provider)
    except Exception as e:
        raise UserError(f"onnxruntime cannot load the input model ({first_line(e, 300)}); every "
                        "pruned model is checked in onnxruntime, so graphprune prunes only "
                        "models it can run") from e
    if plan is None:
        plan = plan_inputs(graph_of(original), shapes=shapes)
    return _feeds_for(sess, seed, plan, shapes, specs)


def validate(original: onnx.ModelProto | str | None, pruned: onnx.ModelProto, seed: int = 0,
             original_sess=None, ref: Reference | Pending | None = None,
             provider: str = DEFAULT_PROVIDER, io: IoChanges | None = None,
             store: WeightStore | None = None) -> dict:
    """Run all checks on a pruned model (its weights in the proto, or on disk and in `store`);
    returns fidelity numbers on the random inputs used. `ref` (from `reference`, or a
    `start_reference` still running) saves running the original again. The ONNX checker (on
    the graph without weight bytes) runs here while ONNX Runtime runs the pruned model in a
    child. `original` (a model or its path) is checked too when the pruned model fails the
    checker, so faults it brought along are only noted (in the returned dict's
    ``input_faults``)."""
    if ref is None:
        ref = reference(original, seed, original_sess=original_sess)
    return _checked_run(pruned, inference_copy(pruned), ref, low_memory=store is not None,
                        provider=provider, io=io, original=original, store=store)


def validate_file(path: str, ref: Reference | Pending, low_memory: bool = True,
                  provider: str = DEFAULT_PROVIDER, io: IoChanges | None = None,
                  original: onnx.ModelProto | str | None = None,
                  checked: onnx.ModelProto | None = None) -> dict:
    """All checks on a written model file (its external data beside it): ONNX Runtime runs the
    file in a child while the ONNX checker checks `checked` (the same graph in memory, without
    its weight bytes: see `inference_copy`; reading a big file back costs more than the check)
    or else the file."""
    return _checked_run(str(path), checked if checked is not None else str(path), ref,
                        low_memory, provider, io, original)


def _checked_run(pruned, checked, ref: Reference | Pending, low_memory: bool,
                 provider: str = DEFAULT_PROVIDER, io: IoChanges | None = None,
                 original=None, store: WeightStore | None = None) -> dict:
    """ONNX Runtime runs `pruned` in a child on the reference's inputs (as the pruned model
    takes them: `io`) while the ONNX checker checks `checked` here, relative to `original`;
    then the outputs are compared with the reference."""
    if isinstance(ref, Pending):
        ref = ref.result()
    run_ = start(_run_pruned, pruned, _mapped(ref[0], io), low_memory, provider, store,
                 fork=provider == DEFAULT_PROVIDER,
                 crash=lambda why: ValidationError(f"onnxruntime crashed ({why}) running the "
                                                   "pruned model"))
    try:
        faults = check_model_relative(checked, original)
    except BaseException:
        run_.cancel()
        raise
    return _with_faults(_compare(run_.result(), ref, io), faults)


def _with_faults(fid: dict, faults: list[str]) -> dict:
    if faults:
        fid["input_faults"] = faults
    return fid


def _mapped(arrays: dict, io: IoChanges | None) -> dict:
    """Arrays keyed by the original's graph inputs/outputs, as the pruned model has them."""
    return arrays if io is None else io.apply(arrays)


def _compare(out: dict, ref: Reference, io: IoChanges | None = None) -> dict:
    want = _mapped(ref[1], io)
    if list(out) != list(want):
        raise ValidationError(f"output names changed: {list(want)} -> {list(out)}")
    for name in want:
        a, b = want[name], out[name]
        if _signature(a) != _signature(b):
            raise ValidationError(f"output '{name}' changed from {_signature(a)} to "
                                  f"{_signature(b)}")
    return cosine_fidelity(want, out)


def _signature(value) -> str:
    """dtype and shape of a tensor output; for a sequence (ZipMap's list of maps, a sequence
    of tensors) its length and the signature of its first element."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, dict):
        return f"map[{len(value)}]"
    if isinstance(value, (list, tuple)):
        first = _signature(value[0]) if len(value) else ""
        return f"sequence[{len(value)}]({first})"
    return type(value).__name__


def _run_pruned(pruned, feeds: dict, low_memory: bool, provider: str = DEFAULT_PROVIDER,
                store: WeightStore | None = None) -> dict:
    try:
        return run(session(pruned, low_memory=low_memory, provider=provider, store=store), feeds)
    except UserError:
        raise
    except Exception as e:
        raise ValidationError(f"onnxruntime cannot run the pruned model: {first_line(e, 300)}") from e

"""Validation: the pruned model must pass the ONNX checker, run in ONNX Runtime and produce
outputs with the same names, dtypes and shapes as the original on the same inputs.

The original's outputs (the *reference*) are computed once, before pruning starts: an input that
ONNX Runtime cannot load or run is refused up front (graphprune checks every pruned model in
ONNX Runtime, so it prunes only models ONNX Runtime runs), and for big models the original's
session is gone before the pruned model is loaded, so the two never share memory.

A pruned model whose weights stay on disk is validated the same way, before anything is
written: ONNX Runtime reads its unchanged weights from the input's data files and its rewritten
ones from the store's arrays, in place (see `graphprune.runtime.session`). Any model can instead
be validated from its written files (`validate_file`): the checker on the path, ONNX Runtime
from the path, before the files are renamed into place.
"""
from __future__ import annotations

import onnx

from ..errors import UserError, ValidationError
from ..ir.sanity import check_model, first_line
from .fidelity import cosine_fidelity
from ..ir.shapes import inference_copy
from ..ir.storage import WeightStore
from .isolate import Pending, start
from .session import DEFAULT_PROVIDER, background_threads, random_inputs, run, session

Reference = tuple[dict, dict]  # (feeds, outputs of the original)


def _sizes(sess) -> tuple[int, ...]:
    """Sizes to try, in order, for symbolic dims. Image-like inputs (float, rank >= 4, symbolic
    spatial axis) start at 224: tiny images leave pooling windows empty, which crashes some ONNX
    Runtime kernels (integer division by zero) instead of failing cleanly. Sequences start at 16."""
    for i in sess.get_inputs():
        if "float" in i.type and len(i.shape) >= 4 and \
                any(not isinstance(d, int) or d <= 0 for d in i.shape[2:]):
            return (224, 64, 16, 1)
    return (16, 1, 224, 64)


def _feeds_for(original_sess, seed: int, shapes: dict | None = None):
    """Random inputs the original model accepts (tries a few sizes for symbolic dims; inputs
    named in `shapes` get those dims)."""
    last = None
    for dyn in _sizes(original_sess):
        feeds = random_inputs(original_sess, seed=seed, dynamic=dyn, shapes=shapes)
        try:
            return feeds, run(original_sess, feeds)
        except Exception as e:  # the original rejects these sizes; try others
            last = e
    raise UserError(f"the input model does not run in onnxruntime on random inputs: "
                    f"{first_line(last)}")


def start_reference(original: onnx.ModelProto | str, seed: int = 0,
                    low_memory: bool = False, shapes: dict | None = None,
                    provider: str = DEFAULT_PROVIDER) -> Pending:
    """Start the original's reference run in a child process and return at once: the caller
    goes on (analysis, scoring, rewrite) while ONNX Runtime loads and runs the original."""
    return start(_reference, original, seed, low_memory, shapes, provider,
                 fork=provider == DEFAULT_PROVIDER,
                 crash=lambda why: UserError(f"onnxruntime crashed ({why}) running the input "
                                             "model on random inputs; graphprune cannot "
                                             "validate a pruned version of it"))


def reference(original: onnx.ModelProto | str, seed: int = 0, low_memory: bool = False,
              original_sess=None) -> Reference:
    """Random feeds and the original model's outputs on them; `UserError` when ORT cannot
    load or run the original (or crashes on it)."""
    if original_sess is not None:
        return _feeds_for(original_sess, seed)
    return start_reference(original, seed, low_memory).result()


def _reference(original, seed: int, low_memory: bool, shapes: dict | None = None,
               provider: str = DEFAULT_PROVIDER) -> Reference:
    try:
        # one core is left to the parent, which analyzes while this runs
        sess = session(original, low_memory=low_memory, threads=background_threads(),
                       provider=provider)
    except Exception as e:
        raise UserError(f"onnxruntime cannot load the input model ({first_line(e, 300)}); every "
                        "pruned model is checked in onnxruntime, so graphprune prunes only "
                        "models it can run") from e
    return _feeds_for(sess, seed, shapes)


def validate(original: onnx.ModelProto | None, pruned: onnx.ModelProto, seed: int = 0,
             original_sess=None, ref: Reference | Pending | None = None,
             provider: str = DEFAULT_PROVIDER, store: WeightStore | None = None) -> dict:
    """Run all checks on a pruned model (its weights in the proto, or on disk and in `store`);
    returns fidelity numbers on the random inputs used. `ref` (from `reference`, or a
    `start_reference` still running) saves running the original again. The ONNX checker (on
    the graph without weight bytes) runs here while ONNX Runtime runs the pruned model in a
    child."""
    if ref is None:
        ref = reference(original, seed, original_sess=original_sess)
    return _checked_run(pruned, inference_copy(pruned), ref, low_memory=store is not None,
                        provider=provider, store=store)


def validate_file(path: str, ref: Reference | Pending, low_memory: bool = True,
                  provider: str = DEFAULT_PROVIDER) -> dict:
    """All checks on a written model file (its external data beside it): the ONNX checker on
    the file while ONNX Runtime runs it in a child."""
    return _checked_run(str(path), str(path), ref, low_memory, provider)


def _checked_run(pruned, checked, ref: Reference | Pending, low_memory: bool,
                 provider: str = DEFAULT_PROVIDER, store: WeightStore | None = None) -> dict:
    """ONNX Runtime runs `pruned` in a child on the reference's inputs while the ONNX checker
    checks `checked` here; then the outputs are compared with the reference."""
    if isinstance(ref, Pending):
        ref = ref.result()
    run_ = start(_run_pruned, pruned, ref[0], low_memory, provider, store,
                 fork=provider == DEFAULT_PROVIDER,
                 crash=lambda why: ValidationError(f"onnxruntime crashed ({why}) running the "
                                                   "pruned model"))
    try:
        check_model(checked)
    except BaseException:
        run_.cancel()
        raise
    return _compare(run_.result(), ref)


def _compare(out: dict, ref: Reference) -> dict:
    _, want = ref
    if list(out) != list(want):
        raise ValidationError(f"output names changed: {list(want)} -> {list(out)}")
    for name in want:
        a, b = want[name], out[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            raise ValidationError(
                f"output '{name}' changed from {a.dtype}{list(a.shape)} to {b.dtype}{list(b.shape)}")
    return cosine_fidelity(want, out)


def _run_pruned(pruned, feeds: dict, low_memory: bool, provider: str = DEFAULT_PROVIDER,
                store: WeightStore | None = None) -> dict:
    try:
        return run(session(pruned, low_memory=low_memory, provider=provider, store=store), feeds)
    except UserError:
        raise
    except Exception as e:
        raise ValidationError(f"onnxruntime cannot run the pruned model: {first_line(e, 300)}") from e

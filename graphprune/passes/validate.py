"""Validation: the pruned model must pass the ONNX checker, run in ONNX Runtime and produce
outputs with the same names, dtypes and shapes as the original on the same inputs.

The original's outputs (the *reference*) are computed once, before pruning starts: an input that
ONNX Runtime cannot load or run is refused up front (graphprune checks every pruned model in
ONNX Runtime, so it prunes only models ONNX Runtime runs), and for big models the original's
session is gone before the pruned model is loaded, so the two never share memory.

Models whose weights stay on disk are validated from the written files (`validate_file`): the
checker on the path, ONNX Runtime from the path, before the files are renamed into place.
"""
from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import sys

import numpy as np
import onnx
import onnxruntime as ort

from ..backends import ort as ortb
from ..errors import UserError, ValidationError

Reference = tuple[dict, dict]  # (feeds, outputs of the original)


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else type(e).__name__


def session(src: onnx.ModelProto | str, low_memory: bool = False) -> ort.InferenceSession:
    """An ORT session from a ModelProto or a path. `low_memory` (big models): no weight
    pre-packing, so weights are used where they lie instead of being copied into packed buffers."""
    if not low_memory:
        return ortb.session(src)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    data = src if isinstance(src, str) else src.SerializeToString()
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def _sizes(sess) -> tuple[int, ...]:
    """Sizes to try, in order, for symbolic dims. Image-like inputs (float, rank >= 4, symbolic
    spatial axis) start at 224: tiny images leave pooling windows empty, which crashes some ONNX
    Runtime kernels (integer division by zero) instead of failing cleanly. Sequences start at 16."""
    for i in sess.get_inputs():
        if "float" in i.type and len(i.shape) >= 4 and \
                any(not isinstance(d, int) or d <= 0 for d in i.shape[2:]):
            return (224, 64, 16, 1)
    return (16, 1, 224, 64)


def _feeds_for(original_sess, seed: int):
    """Random inputs the original model accepts (tries a few sizes for symbolic dims)."""
    last = None
    for dyn in _sizes(original_sess):
        feeds = ortb.random_inputs(original_sess, seed=seed, dynamic=dyn)
        try:
            return feeds, ortb.run(original_sess, feeds)
        except Exception as e:  # the original rejects these sizes; try others
            last = e
    raise UserError(f"the input model does not run in onnxruntime on random inputs: "
                    f"{_first_line(last)}")


def reference(original: onnx.ModelProto | str, seed: int = 0, low_memory: bool = False,
              original_sess=None) -> Reference:
    """Random feeds and the original model's outputs on them; `UserError` when ORT cannot
    load or run the original (or crashes on it)."""
    if original_sess is not None:
        return _feeds_for(original_sess, seed)
    return isolated(_reference, original, seed, low_memory,
                    crash=lambda why: UserError(f"onnxruntime crashed ({why}) running the input "
                                                "model on random inputs; graphprune cannot "
                                                "validate a pruned version of it"))


def _reference(original, seed: int, low_memory: bool) -> Reference:
    try:
        sess = session(original, low_memory)
    except Exception as e:
        raise UserError(f"onnxruntime cannot load the input model ({_first_line(e)}); every "
                        "pruned model is checked in onnxruntime, so graphprune prunes only "
                        "models it can run") from e
    return _feeds_for(sess, seed)


_ERRORS = {"UserError": UserError, "ValidationError": ValidationError}


def isolated(fn, *args, crash):
    """`fn(*args)` in a forked child process, for ONNX Runtime runs of untrusted models: a model
    that crashes ORT (a kernel dividing by zero, an abort) must end in a clean error, not take
    graphprune down with it — a crash in the middle of a write would also leave temporary files.
    The child shares the parent's memory copy-on-write, so forking costs milliseconds and no
    copy of the weights. The result (feeds and outputs: small arrays) comes back pickled.

    `crash(reason)` builds the exception raised when the child dies. Off Linux (fork is missing
    or unsafe with system frameworks) or with GRAPHPRUNE_NO_FORK set, `fn` runs in-process.
    """
    if not sys.platform.startswith("linux") or os.environ.get("GRAPHPRUNE_NO_FORK"):
        return fn(*args)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        code = 0
        try:
            os.close(r)
            faulthandler.disable()  # a crash here is reported by the parent, in one line
            try:
                payload = ("ok", fn(*args))
            except BaseException as e:  # noqa: BLE001  (everything goes back to the parent)
                payload = ("err", type(e).__name__, str(e))
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
    except BaseException:  # Ctrl-C while waiting: the child goes too
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        raise
    if not data:
        code = os.waitstatus_to_exitcode(status)
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise crash(why)
    payload = pickle.loads(data)
    if payload[0] == "ok":
        return payload[1]
    kind, msg = payload[1], payload[2]
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    raise _ERRORS.get(kind, ValidationError)(msg if kind in _ERRORS else f"{kind}: {msg}")


def check(model: onnx.ModelProto | str) -> None:
    """The ONNX checker (full check: strict shape inference too), on a ModelProto or a written
    file. Ops ONNX has no schema for but ONNX Runtime registers in the default domain are left
    to the ORT run (see `model_io.mask_unregistered_ops`)."""
    from ..model_io import has_unregistered_ops, inference_copy, mask_unregistered_ops

    try:
        proto = onnx.load(model, load_external_data=False) if isinstance(model, str) else model
        if has_unregistered_ops(proto):
            # the files are checked by the ORT run; here the graph, without weight bytes
            masked = inference_copy(proto)
            mask_unregistered_ops(masked)
            onnx.checker.check_model(masked, full_check=True)
        elif isinstance(model, str) or model.ByteSize() < 2 ** 31 - 1:
            onnx.checker.check_model(model, full_check=True)
        else:
            onnx.checker.check_model(model)
    except Exception as e:
        raise ValidationError(f"onnx checker: {_first_line(e)}") from e


def validate(original: onnx.ModelProto | None, pruned: onnx.ModelProto, seed: int = 0,
             original_sess=None, ref: Reference | None = None) -> dict:
    """Run all checks on an in-memory pruned model; returns fidelity numbers on the random
    inputs used. `ref` (from `reference`) saves running the original again."""
    check(pruned)
    if ref is None:
        ref = reference(original, seed, original_sess=original_sess)
    return _compare_run(pruned, ref, low_memory=False)


def validate_file(path: str, ref: Reference) -> dict:
    """All checks on a written model file (its external data beside it)."""
    check(str(path))
    return _compare_run(str(path), ref, low_memory=True)


def _compare_run(pruned, ref: Reference, low_memory: bool) -> dict:
    feeds, want = ref
    out = isolated(_run_pruned, pruned, feeds, low_memory,
                   crash=lambda why: ValidationError(f"onnxruntime crashed ({why}) running the "
                                                     "pruned model"))
    if list(out) != list(want):
        raise ValidationError(f"output names changed: {list(want)} -> {list(out)}")
    for name in want:
        a, b = want[name], out[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            raise ValidationError(
                f"output '{name}' changed from {a.dtype}{list(a.shape)} to {b.dtype}{list(b.shape)}")
    return fidelity(want, out)


def _run_pruned(pruned, feeds: dict, low_memory: bool) -> dict:
    try:
        return ortb.run(session(pruned, low_memory), feeds)
    except Exception as e:
        raise ValidationError(f"onnxruntime cannot run the pruned model: {_first_line(e)}") from e


def fidelity(ref: dict, out: dict) -> dict:
    """Max abs difference and cosine similarity over all float outputs (flattened)."""
    diffs, cos = [], []
    for name in ref:
        a = np.asarray(ref[name], dtype=np.float64).reshape(-1)
        b = np.asarray(out[name], dtype=np.float64).reshape(-1)
        if not a.size:
            continue
        diffs.append(float(np.max(np.abs(a - b))))
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cos.append(float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb))
    return {"metric": "cosine", "value": min(cos) if cos else 1.0,
            "max_abs_diff": max(diffs) if diffs else 0.0, "inputs": "random"}

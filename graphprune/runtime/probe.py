"""Complete the shapes ONNX shape inference could not infer, by running the model.

Exporters (the legacy PyTorch exporter above all) compute reshape targets from `Shape` at run
time; ONNX shape inference then loses every size downstream, and without sizes no axis can be
coupled safely. ONNX Runtime knows them all. We run the model twice with different sizes for
its symbolic input dims, exposing every intermediate value: a size equal in both runs is static,
a size that differs is symbolic, named after its pair of values so that equal run-time sizes
(the batch of two tensors) share one name.

Only used when inference left sizes unknown, and only on models small enough to run twice.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..ir import Dim
from ..ir.inputs import has_cache, input_specs, random_feeds
from ..ir.storage import approx_bytes
from .isolate import isolated
from .session import run_options, session

MAX_MODEL_BYTES = 1 << 30
PROBE_SIZES = ((2, 7), (3, 11))  # (batch, other symbolic dims) for the two runs
FALLBACK_SIZES = ((2, 32), (3, 48))
# A decoder with a KV cache: (batch, current tokens, past length). Batch, current and total
# length all differ between the two runs; the second keeps batch 1, as GroupQueryAttention
# requires when both the past and the current tokens are more than one.
CACHE_SIZES = ((2, 7, 0), (1, 11, 5))


def _needs_probe(model: onnx.ModelProto, shapes: dict) -> bool:
    for node in model.graph.node:
        for o in node.output:
            if o and (o not in shapes or any(_unknown(d) for d in shapes[o])):
                return True
    return False


def _unknown(d) -> bool:
    """None, or a name shape inference invented for a size it could not relate to any other."""
    return d is None or (isinstance(d, str) and d.startswith("unk__"))


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type.elem_type
        if t:
            types[vi.name] = t
    return types


def _run_all(model: onnx.ModelProto, names: list[str], sizes, seed: int, specs):
    sess = session(model)
    feeds = random_feeds(specs, seed=seed, batch=sizes[0], dynamic=sizes[1],
                         past=sizes[2] if len(sizes) > 2 else None)
    outs = sess.run(names, feeds, run_options())
    got = {n: tuple(np.shape(v)) for n, v in zip(names, outs)}
    got.update({n: tuple(np.shape(v)) for n, v in feeds.items()})
    return got


def _run_twice(probe: onnx.ModelProto, names: list[str], specs):
    """Both probe runs, with a fallback pair of sizes; None if the model runs at neither."""
    pairs = (CACHE_SIZES,) if has_cache(specs) else (PROBE_SIZES, FALLBACK_SIZES)
    for sizes_a, sizes_b in pairs:
        try:
            return (_run_all(probe, names, sizes_a, 0, specs),
                    _run_all(probe, names, sizes_b, 1, specs))
        except Exception:  # noqa: BLE001  (sizes the model rejects: try the next pair)
            continue
    return None


def probe_shapes(model: onnx.ModelProto, shapes: dict) -> dict[str, tuple[Dim, ...]]:
    """Shapes of every node output observed in ONNX Runtime (symbolic where sizes vary)."""
    if not _needs_probe(model, shapes) or approx_bytes(model) > MAX_MODEL_BYTES:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    try:
        types = _elem_types(probe)
    except Exception:
        return {}
    existing = {o.name for o in probe.graph.output}
    names = []
    for node in probe.graph.node:
        for o in node.output:
            if o and o not in existing:
                probe.graph.output.append(
                    onnx.helper.make_tensor_value_info(o, types[o], None) if o in types
                    else onnx.helper.make_empty_tensor_value_info(o))
                names.append(o)
    names += [o.name for o in model.graph.output]
    try:  # in a child process: some models crash ONNX Runtime at made-up sizes (SIGFPE)
        runs = isolated(_run_twice, probe, names, input_specs(model), crash=RuntimeError)
    except Exception:  # noqa: BLE001  (no probe: the sizes stay unknown and their groups frozen)
        return {}
    if runs is None:
        return {}
    a, b = runs
    out: dict[str, tuple[Dim, ...]] = {}
    for n in a:
        sa, sb = a[n], b[n]
        if len(sa) != len(sb):
            continue
        out[n] = tuple(int(x) if x == y else f"~{x}x{y}" for x, y in zip(sa, sb))
    return out

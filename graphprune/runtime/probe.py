"""Complete the shapes ONNX shape inference could not infer, by running the model.

Exporters (the legacy PyTorch exporter above all) compute reshape targets from `Shape` at run
time; ONNX shape inference then loses every size downstream, and without sizes no axis can be
coupled safely. ONNX Runtime knows them all. We run the model three times with different sizes
for its symbolic input dims, exposing every intermediate value: a size equal in all runs is
static, a size that differs is symbolic, named after its values so that equal run-time sizes
(the batch of two tensors) share one name.

The sizes are the input plan's (`graphprune.ir.input_sizes`: what the user gave, what the graph
fixes, 224 for images, 16 for sequences), scaled by 1, 3/4 and 5/4: far enough apart that a
size computed by downsampling (a width divided by 16) differs between runs, so it is never
mistaken for a constant. Given input values are kept; integer inputs draw from given data.

Only used when inference left sizes unknown, and only on models small enough to run thrice.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..ir import Dim
from ..ir.inputs import has_cache, input_specs, random_feeds
from ..ir.storage import approx_bytes
from .isolate import isolated
from ..ir.input_sizes import InputPlan, plan_inputs
from .session import run_options, session, session_specs

MAX_MODEL_BYTES = 1 << 30
# (batch, scale of every other symbolic size) of the three runs, then fallbacks at fixed sizes
PROBE_RUNS = ((2, 1.0), (3, 0.75), (1, 1.25))
FALLBACK_RUNS = (((2, 7), (3, 11), (1, 19)), ((2, 32), (3, 48), (1, 40)))
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


def _run_all(model: onnx.ModelProto, names: list[str], make_feeds):
    sess = session(model)
    feeds = make_feeds(session_specs(sess))
    outs = sess.run(names, feeds, run_options())
    got = {n: tuple(np.shape(v)) for n, v in zip(names, outs)}
    got.update({n: tuple(np.shape(v)) for n, v in feeds.items()})
    return got


def _size_sets(plan: InputPlan) -> list[list[dict]]:
    """The input shapes of the three runs, then of the fallbacks."""
    sets = [[plan.shapes_at(b, (lambda n, f=f: round(n * f)), axes="symbolic")
             for b, f in PROBE_RUNS]]
    sets += [[plan.shapes_at(b, d, axes="symbolic") for b, d in runs] for runs in FALLBACK_RUNS]
    return sets


def _feed_sets(plan: InputPlan, cache: list | None) -> list[list]:
    """Feed makers (session specs -> feeds) of each set of runs: the plan's three sizes and
    the fallbacks, or for a decoder with a KV cache (`cache`: the model's `input_specs`, with
    the cache's head sizes read from the weights) two runs that keep the cache's contract."""
    if cache:
        return [[(lambda _, k=k, s=s: random_feeds(cache, seed=k, batch=s[0], dynamic=s[1],
                                                  past=s[2]))
                 for k, s in enumerate(CACHE_SIZES)]]
    return [[(lambda specs, k=k, sh=sh: plan.feeds(specs, seed=k, shapes=sh))
             for k, sh in enumerate(shapes)] for shapes in _size_sets(plan)]


def _run_thrice(probe: onnx.ModelProto, names: list[str], plan: InputPlan,
                cache: list | None):
    """The probe runs, with fallback sizes; None if the model runs at none of them."""
    for makers in _feed_sets(plan, cache):
        try:
            return [_run_all(probe, names, make) for make in makers]
        except Exception:  # noqa: BLE001  (sizes the model rejects: try the next set)
            continue
    return None


def probe_shapes(model: onnx.ModelProto, shapes: dict, plan: InputPlan | None = None
                 ) -> dict[str, tuple[Dim, ...]]:
    """Shapes of every node output observed in ONNX Runtime (symbolic where sizes vary)."""
    if not _needs_probe(model, shapes) or approx_bytes(model) > MAX_MODEL_BYTES:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    try:
        types = _elem_types(probe)
        plan = plan if plan is not None else plan_inputs(model)
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
        specs = input_specs(model)
        runs = isolated(_run_thrice, probe, names, plan, specs if has_cache(specs) else None,
                        crash=RuntimeError)
    except Exception:  # noqa: BLE001  (no probe: the sizes stay unknown and their groups frozen)
        return {}
    if runs is None:
        return {}
    out: dict[str, tuple[Dim, ...]] = {}
    for n in runs[0]:
        seen = [r.get(n) for r in runs]
        if any(s is None or len(s) != len(seen[0]) for s in seen):
            continue
        out[n] = tuple(int(d[0]) if len(set(d)) == 1 else "~" + "x".join(map(str, d))
                       for d in zip(*seen))
    return out

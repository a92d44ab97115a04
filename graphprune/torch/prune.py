"""`prune_module`: export, plan on the graph, apply to the module, check they agree."""
from __future__ import annotations

import numpy as np
import torch

from .apply import apply_plan, restore, snapshot
from .export import as_tuple, export_onnx


def _onnx_outputs(model, inputs: tuple) -> list[np.ndarray]:
    from ..runtime import session as ortb

    sess = ortb.session(model)
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), tensors)}
    return list(ortb.run(sess, feeds).values())


def _module_outputs(module, inputs: tuple) -> list[np.ndarray]:
    was = module.training
    module.eval()
    with torch.no_grad():
        out = module(*inputs)
    module.train(was)
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().cpu().numpy() for o in outs]


def prune_module(module: torch.nn.Module, example_inputs, ratio: float = 0.3,
                 criterion: str = "magnitude", check: bool = True, atol: float = 1e-4,
                 **options):
    """Prune `module` in place through its ONNX graph; returns (module, PruneResult).

    Options are those of `graphprune.prune` (global_rank, round_to, min_keep, protect, seed,
    ...). With `check`, the pruned module must reproduce the pruned ONNX model's outputs on
    `example_inputs` (allclose, atol/rtol `atol`), else RuntimeError and the module is restored:
    a module whose forward hard-codes sizes or splits (e.g. `chunk(2)`) cannot follow the graph.
    A tensor that shrinks but is not a parameter/buffer raises MappingError before any change.
    Optimizers made before pruning hold the old parameters; create them afterwards.
    """
    from ..pipeline.pipeline import prune

    inputs = as_tuple(example_inputs)
    proto = export_onnx(module, inputs)
    result = prune(proto, ratio=ratio, criterion=criterion, **options)
    before = snapshot(module)
    apply_plan(module, result)
    if check:
        try:
            _check(module, result, inputs, atol)
        except RuntimeError:
            restore(before)
            raise
    return module, result


def _check(module, result, inputs: tuple, atol: float) -> None:
    ref = _onnx_outputs(result.model, inputs)
    try:
        got = _module_outputs(module, inputs)
    except Exception as e:
        raise RuntimeError(
            "the pruned module cannot run although the pruned ONNX model does; its forward "
            f"probably hard-codes sizes or splits ({type(e).__name__}: {e}). The module was "
            "left unchanged.") from e
    if len(ref) != len(got) or not all(
            a.shape == b.shape and np.allclose(a, b, atol=atol, rtol=atol)
            for a, b in zip(ref, got)):
        diff = max((float(np.max(np.abs(a - b))) for a, b in zip(ref, got)
                    if a.shape == b.shape), default=float("nan"))
        raise RuntimeError(
            "the pruned module does not reproduce the pruned ONNX model "
            f"(shapes {[a.shape for a in ref]} vs {[b.shape for b in got]}, max abs diff "
            f"{diff:.3g}); its forward may hard-code sizes. The module was left unchanged.")

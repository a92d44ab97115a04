"""Prune a PyTorch `nn.Module` through its ONNX graph (optional extra: needs torch).

The pruning plan is made on the exported ONNX graph, where graphprune sees every coupling, and
then applied to the module's own parameters, so the result is still an `nn.Module` that can be
fine-tuned. The core package never imports torch; only this subpackage does.

    from graphprune.torch import prune_module
    module, result = prune_module(module, (x,), ratio=0.3)
"""
from .apply import apply_plan
from .export import export_onnx
from .prune import prune_module

__all__ = ["prune_module", "export_onnx", "apply_plan"]

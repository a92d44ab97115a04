"""Export an `nn.Module` so that its ONNX initializers *are* its parameters.

The legacy exporter is used with constant folding off and `TrainingMode.PRESERVE` on an
eval-mode module: BatchNorm then stays a BatchNormalization node (not folded into the Conv) and
every initializer is named like the parameter or buffer it came from, which is what lets a plan
made on the graph be applied back to the module. Initializers are exported as graph inputs and
removed from the inputs afterwards: otherwise the exporter merges parameters whose *values* are
equal (a fresh BatchNorm's zero bias and zero running mean become one tensor named after one of
them), and the other parameter would have no tensor of its own in the graph.
"""
from __future__ import annotations

import io
import warnings

import onnx
import torch


def as_tuple(example_inputs) -> tuple:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def export_onnx(module: torch.nn.Module, example_inputs, opset: int = 17) -> onnx.ModelProto:
    """The module (in eval mode) as an ONNX ModelProto with parameter-named initializers."""
    was_training = module.training
    module.eval()
    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, as_tuple(example_inputs), buf, dynamo=False,
                              opset_version=opset, do_constant_folding=False,
                              keep_initializers_as_inputs=True,
                              training=torch.onnx.TrainingMode.PRESERVE)
    finally:
        module.train(was_training)
    model = onnx.load_from_string(buf.getvalue())
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model

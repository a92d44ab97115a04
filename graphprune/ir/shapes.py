"""Shapes: ONNX shape inference on a copy without weight bytes."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .graph import shapes_from_model
from .storage import numel

SHAPE_INFERENCE_MAX_ELEMENTS = 4096  # initializers kept as values when inferring shapes


def inference_copy(model: onnx.ModelProto,
                   max_elements: int = SHAPE_INFERENCE_MAX_ELEMENTS) -> onnx.ModelProto:
    """The model without its weight bytes: initializers over `max_elements` elements (and all
    external ones) become typed graph inputs. Shape inference and the checker need their types
    and shapes, never their values, and the copy costs nothing at any model size."""
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g, src = m.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    listed = {i.name for i in src.input}
    for t in src.initializer:
        if t.data_location != TensorProto.EXTERNAL and numel(t.dims) <= max_elements:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for s in src.sparse_initializer:
        if s.values.name not in listed:
            g.input.append(helper.make_tensor_value_info(s.values.name, s.values.data_type,
                                                         list(s.dims)))
    return m


def infer_shapes(model: onnx.ModelProto) -> dict:
    """Static shapes of all values, from ONNX shape inference with data propagation.

    Runs on a copy without weight bytes, so the user's model keeps exactly the value_info it came
    with and big models cost no copy.
    """
    copy = inference_copy(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception:
        try:
            inferred = onnx.shape_inference.infer_shapes(copy)
        except Exception:
            inferred = copy
    return shapes_from_model(inferred)

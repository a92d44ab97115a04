"""The model layer: an editable index over a ModelProto, weights wherever they are stored,
loading, sanity checks, shape inference and folding, graph inputs, and writing files.

Nothing here prunes and nothing here runs ONNX Runtime.
"""
from . import quant
from .graph import WEIGHTS, ConstSource, Dim, GraphView, attr, shapes_from_model, subgraph_outer_names

__all__ = ["quant", "WEIGHTS", "ConstSource", "Dim", "GraphView", "attr", "shapes_from_model",
           "subgraph_outer_names"]

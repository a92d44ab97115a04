"""graphprune: structured pruning compiler for ONNX graphs.

    import graphprune
    result = graphprune.prune("model.onnx", ratio=0.3)
    result.save("model.pruned.onnx")
    print(result.report["params"])
"""
__version__ = "0.1.0"

from . import ops  # noqa: E402,F401  (registers the op rules)
from .pipeline import PruneResult, analyze_model as analyze, prune  # noqa: E402,F401

__all__ = ["prune", "analyze", "PruneResult", "__version__"]

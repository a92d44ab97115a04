"""graphprune: structured pruning compiler for ONNX graphs.

    import graphprune
    result = graphprune.prune("model.onnx", ratio=0.3)
    result.save("model.pruned.onnx")
    print(result.report["params"])

The API names are imported on first use, so `import graphprune` (and the command line's start)
stays cheap.
"""
from .version import __version__

__all__ = ["prune", "analyze", "plan", "apply", "PruneResult", "PrunePlan", "__version__"]


def __getattr__(name):
    if name in ("prune", "analyze", "plan", "apply", "PruneResult", "PrunePlan"):
        from .pipeline import pipeline, plans

        return {"prune": pipeline.prune, "analyze": pipeline.analyze_model,
                "plan": pipeline.plan, "apply": pipeline.apply,
                "PruneResult": pipeline.PruneResult, "PrunePlan": plans.PrunePlan}[name]
    raise AttributeError(f"module 'graphprune' has no attribute {name!r}")

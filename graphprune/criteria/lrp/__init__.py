"""LRP (Layer-wise Relevance Propagation) importance: kernels, per-op rules, the explainer and
the criterion. Importing this package registers the ``lrp`` criterion."""
from . import criterion  # noqa: F401

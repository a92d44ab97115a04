"""Importance criteria. Importing this package registers every criterion in `CRITERIA`."""
from . import activation, lrp, magnitude, obspa  # noqa: F401
from .registry import CRITERIA, criterion  # noqa: F401

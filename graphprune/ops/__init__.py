"""Op rules. Importing this package registers every rule in `registry.RULES`."""
from . import attention, contrib, conv, elementwise, join_split, linear, norm, pool, quantized, resize, views  # noqa: F401
from .registry import RULES, OpRule, lookup, rule, supported_ops  # noqa: F401

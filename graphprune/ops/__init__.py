"""Op rules. Importing this package registers every rule in `registry.RULES`."""
from . import (attention, contrib, conv, elementwise, join_split, linear, ml, norm,  # noqa: F401
               pool, quant, quantized, recurrent, resize, views)
from .registry import RULES, OpRule, lookup, rule, supported_ops, supported_ops_table  # noqa: F401

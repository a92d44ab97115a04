"""Op rules. Importing this package registers every rule in `registry.RULES`."""
from . import (contrib, conv, elementwise, join_split, linear, norm, pool, quant,  # noqa: F401
               ml, recurrent, resize, views)
from .registry import RULES, OpRule, lookup, rule, supported_ops, supported_ops_table  # noqa: F401

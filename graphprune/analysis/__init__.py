"""Analysis: the dependency graph of coupled axes, groups and their units, kinds, and costs."""

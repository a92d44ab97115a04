"""Transforms: selection of the units to keep, compensation, depth pruning, the rewrite that
shrinks the model, and untying / re-tying shared constants."""

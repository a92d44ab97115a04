"""Passes over the model and its dependency groups. The pipeline that runs them in order is
declared in `graphprune.pipeline`."""

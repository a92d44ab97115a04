"""The pipeline: options, the state and its stages, the declared order, results and reports."""

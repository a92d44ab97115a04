"""Calibration: samples (arrays, .npz, images, text, random) and the activation statistics the
data-aware criteria and compensation read. Running the model is left to the caller (a
`graphprune.calibration.stats.Runner`)."""

"""Reference models and their ONNX exports used by graphprune's tests and benchmarks."""

"""Execution backends (ONNX Runtime) used for validation, fidelity and benchmarks."""

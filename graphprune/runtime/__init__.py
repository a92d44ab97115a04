"""Everything that runs ONNX Runtime: sessions, fork isolation, runs with taps, shape probing,
validation runs, fidelity, benchmarks and language-model checks. No other package imports
onnxruntime; only the pipeline (and the command line) call into this one."""

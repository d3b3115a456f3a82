"""The GPU measurement campaign (README.md here); run from the repository root, e.g.
``python -m benchmarks.gpu.collect``."""

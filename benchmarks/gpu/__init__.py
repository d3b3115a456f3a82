"""GPU measurement scripts (README.md here); run from the repository root, e.g.
``python -m benchmarks.gpu.run --list``."""

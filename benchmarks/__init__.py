"""Scripts that print the measured tables (run from the repository root: ``python -m benchmarks.NAME``)."""

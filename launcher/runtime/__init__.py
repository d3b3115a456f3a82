"""What runs on every rank: the trainer (``python -m launcher.runtime.train``), its model, the parallelisms
(parallel/), optimizer, data, checkpoints, metrics and faults, and the many-plan ``bench``. Imports only torch,
numpy, sympy, pyyaml, costmodel and launcher (GPU nodes may lack typer, pulp and highspy)."""

"""Tools for GPU nodes: the hardware profiler (``python -m launcher.gputools.profile``) and its parts, and
``verify`` (a plan's peak memory traced under FakeTensorMode)."""

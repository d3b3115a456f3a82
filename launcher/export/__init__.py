"""A plan as another engine's configuration: one module per engine (torchtitan, megatron, deepspeed) and what
they share (common.py). No torch import: exporting runs on a laptop."""

#!/usr/bin/env bash
PYTHONPATH="$(dirname "$0"):$PYTHONPATH" torchrun --nnodes 1 --nproc-per-node 8 -m torchtitan.train --module loadmaster_torchtitan --config loadmaster_plan

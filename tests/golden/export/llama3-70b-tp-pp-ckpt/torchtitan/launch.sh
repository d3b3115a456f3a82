#!/usr/bin/env bash
PYTHONPATH="$(dirname "$0"):$PYTHONPATH" torchrun --nnodes 8 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint <HOST:PORT> --rdzv-id <JOB_ID> -m torchtitan.train --module loadmaster_torchtitan --config loadmaster_plan

#!/usr/bin/env bash
deepspeed --hostfile <HOSTFILE> --num_nodes 8 --num_gpus 8 <TRAIN_SCRIPT> --deepspeed --deepspeed_config "$(dirname "$0")/ds_config.json"

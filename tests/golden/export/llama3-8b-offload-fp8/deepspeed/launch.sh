#!/usr/bin/env bash
deepspeed --num_gpus 8 <TRAIN_SCRIPT> --deepspeed --deepspeed_config "$(dirname "$0")/ds_config.json"

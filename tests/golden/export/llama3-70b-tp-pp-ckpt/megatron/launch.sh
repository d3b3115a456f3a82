#!/usr/bin/env bash
source "$(dirname "$0")/megatron_args.sh" && CUDA_DEVICE_MAX_CONNECTIONS=1 torchrun --nnodes 8 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint <HOST:PORT> --rdzv-id <JOB_ID> <MEGATRON_LM>/pretrain_gpt.py "${MEGATRON_ARGS[@]}" --tokenizer-type HuggingFaceTokenizer --tokenizer-model <TOKENIZER> --data-path <DATA> --train-iters <STEPS> --lr <LR>

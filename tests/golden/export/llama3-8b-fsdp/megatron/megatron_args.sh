# Megatron-LM arguments written by `loadmaster export` from llama3-8b-fsdp.yaml for llama3.1-8b.
# Plan knobs Megatron-LM cannot express as planned:
#   recompute selective: Megatron's selective recompute covers core attention only; loadmaster also recomputes norms and activations (more memory than predicted)
MEGATRON_ARGS=(
  --num-layers 32
  --hidden-size 4096
  --ffn-hidden-size 14336
  --num-attention-heads 32
  --group-query-attention
  --num-query-groups 8
  --seq-length 8192
  --max-position-embeddings 131072
  --vocab-size 128256
  --position-embedding-type rope
  --rotary-base 500000
  --use-rope-scaling
  --rope-scaling-factor 8
  --normalization RMSNorm
  --norm-epsilon 1e-05
  --disable-bias-linear
  --attention-dropout 0
  --hidden-dropout 0
  --swiglu
  --untie-embeddings-and-output-weights
  --tensor-model-parallel-size 1
  --micro-batch-size 2
  --global-batch-size 16
  --bf16
  --clip-grad 1.0
  --recompute-granularity selective
  --use-megatron-fsdp
  --data-parallel-sharding-strategy optim_grads_params
  --use-distributed-optimizer
  --no-gradient-accumulation-fusion
  --ckpt-format fsdp_dtensor
)

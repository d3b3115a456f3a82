# Megatron-LM arguments written by `loadmaster export` from llama3-70b-tp-pp-ckpt.yaml for llama3-70b.
# Plan knobs Megatron-LM cannot express as planned:
#   recompute_layers 19/16/14/12: Megatron checkpoints the same number of blocks in every stage; exported as the largest, 19
#   zero 2 with pp 4: exported as Megatron's distributed optimizer (optimizer state and fp32 master weights sharded, gradients not)
MEGATRON_ARGS=(
  --num-layers 80
  --hidden-size 8192
  --ffn-hidden-size 28672
  --num-attention-heads 64
  --group-query-attention
  --num-query-groups 8
  --seq-length 8192
  --max-position-embeddings 8192
  --vocab-size 128256
  --position-embedding-type rope
  --rotary-base 500000
  --normalization RMSNorm
  --norm-epsilon 1e-05
  --disable-bias-linear
  --attention-dropout 0
  --hidden-dropout 0
  --swiglu
  --untie-embeddings-and-output-weights
  --tensor-model-parallel-size 8
  --sequence-parallel
  --pipeline-model-parallel-size 4
  --decoder-first-pipeline-num-layers 19
  --decoder-last-pipeline-num-layers 19
  --micro-batch-size 1
  --global-batch-size 64
  --bf16
  --clip-grad 1.0
  --recompute-granularity full
  --recompute-method block
  --recompute-num-layers 19
  --use-distributed-optimizer
)

# Megatron-LM arguments written by `loadmaster export` from llama3-8b-offload-fp8.yaml for llama3-8b.
# Plan knobs Megatron-LM cannot express as planned:
#   offload_state_layers 8: Megatron offloads the optimizer step (fp32 master weights and Adam state) of a share of the parameters, not whole blocks; exported as --optimizer-offload-fraction 0.217, bf16 weights and gradients stay on the GPU
#   offload_activation_layers 4: not exported (Megatron's activation offload is a Transformer Engine option outside this mapping); more GPU memory than planned
#   compile: Megatron-LM does not torch.compile blocks (it uses fused Transformer Engine kernels); dropped
#   grad_reduce every: Megatron reduces gradients once per step (after the last micro-batch)
MEGATRON_ARGS=(
  --num-layers 32
  --hidden-size 4096
  --ffn-hidden-size 14336
  --num-attention-heads 32
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
  --tensor-model-parallel-size 1
  --micro-batch-size 2
  --global-batch-size 64
  --bf16
  --clip-grad 1.0
  --recompute-granularity full
  --recompute-method block
  --recompute-num-layers 16
  --use-megatron-fsdp
  --data-parallel-sharding-strategy optim_grads_params
  --use-distributed-optimizer
  --no-gradient-accumulation-fusion
  --ckpt-format fsdp_dtensor
  --optimizer-cpu-offload
  --optimizer-offload-fraction 0.217
  --use-precision-aware-optimizer
  --overlap-cpu-optimizer-d2h-h2d
  --fp8-format hybrid
  --fp8-recipe tensorwise
  --first-last-layers-bf16
  --num-layers-at-start-in-bf16 0
  --num-layers-at-end-in-bf16 8
)

"""TorchTitan 0.3.0 config (it needs torch 2.13) written by `loadmaster export` from
llama3-70b-tp-pp-ckpt.yaml for llama3-70b.

Run it with this folder on PYTHONPATH (launch.sh does):
  torchrun --nnodes 8 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint <HOST:PORT> --rdzv-id <JOB_ID> -m torchtitan.train --module loadmaster_torchtitan --config loadmaster_plan
Flags after it override fields, e.g. --training.steps 100.
"""
# Plan knobs TorchTitan cannot express as planned:
#   recompute_layers 19/16/14/12 of 19/21/21/19 blocks: TorchTitan checkpoints every block; exported as full AC on all 80 (less memory, more recompute than planned)
from torchtitan.components.quantization import Float8LinearConverter
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC
from torchtitan.models.common import ComplexRoPE
from torchtitan.models.llama3 import config_registry, model_registry
from torchtitan.trainer import Trainer


def _model_spec(converters):
    spec = model_registry('70B', converters=converters or None)
    # the model's RoPE and norm eps, where TorchTitan's builder sets others
    for layer in spec.model.layers:
        layer.attention.rope = ComplexRoPE.Config(dim=layer.attention.rope.dim, max_seq_len=8192, theta=500000.0, scaling='none')
    return spec


def loadmaster_plan() -> Trainer.Config:
    config = config_registry.llama3_70b()
    config.model_spec = _model_spec([])
    config.training = TrainingConfig(
        local_batch_size=32,
        global_batch_size=64,
        seq_len=8192,
        steps=config.training.steps,
        enable_cpu_offload=False,
        disable_cuda_graphs=True,  # TorchTitan 0.3 captures no CUDA graph under PP
    )
    config.parallelism = ParallelismConfig(
        data_parallel_shard_degree=2,
        data_parallel_replicate_degree=1,
        fsdp_reshard_after_forward='never',
        tensor_parallel_degree=8,
        enable_sequence_parallel=True,
        pipeline_parallel_degree=4,
        pipeline_parallel_schedule='1F1B',
        pipeline_parallel_microbatch_size=1,
        module_fqns_per_model_part=[['tok_embeddings', 'layers.0', 'layers.1', 'layers.2', 'layers.3', 'layers.4', 'layers.5', 'layers.6', 'layers.7', 'layers.8', 'layers.9', 'layers.10', 'layers.11', 'layers.12', 'layers.13', 'layers.14', 'layers.15', 'layers.16', 'layers.17', 'layers.18'], ['layers.19', 'layers.20', 'layers.21', 'layers.22', 'layers.23', 'layers.24', 'layers.25', 'layers.26', 'layers.27', 'layers.28', 'layers.29', 'layers.30', 'layers.31', 'layers.32', 'layers.33', 'layers.34', 'layers.35', 'layers.36', 'layers.37', 'layers.38', 'layers.39'], ['layers.40', 'layers.41', 'layers.42', 'layers.43', 'layers.44', 'layers.45', 'layers.46', 'layers.47', 'layers.48', 'layers.49', 'layers.50', 'layers.51', 'layers.52', 'layers.53', 'layers.54', 'layers.55', 'layers.56', 'layers.57', 'layers.58', 'layers.59', 'layers.60'], ['layers.61', 'layers.62', 'layers.63', 'layers.64', 'layers.65', 'layers.66', 'layers.67', 'layers.68', 'layers.69', 'layers.70', 'layers.71', 'layers.72', 'layers.73', 'layers.74', 'layers.75', 'layers.76', 'layers.77', 'layers.78', 'layers.79', 'norm', 'lm_head']],
    )
    config.activation_checkpoint = FullAC.Config()
    config.compile = CompileConfig(enable=False, components=["model", "loss"])
    return config

"""TorchTitan 0.3.0 config (it needs torch 2.13) written by `loadmaster export` from
llama3-8b-offload-fp8.yaml for llama3-8b.

Run it with this folder on PYTHONPATH (launch.sh does):
  torchrun --nnodes 1 --nproc-per-node 8 -m torchtitan.train --module loadmaster_torchtitan --config loadmaster_plan
Flags after it override fields, e.g. --training.steps 100.
"""
# Plan knobs TorchTitan cannot express as planned:
#   recompute_layers 16 of 32 blocks: TorchTitan checkpoints every block; exported as full AC on all 32 (less memory, more recompute than planned)
#   offload_activation_layers 4: TorchTitan has no activation offload; dropped (more GPU memory than planned)
#   offload_state_layers 8: TorchTitan offloads all or nothing; exported as training.enable_cpu_offload for all 32 blocks (slower than planned)
#   fp8_recipe tensorwise: TorchTitan 0.3's Float8LinearConverter offers rowwise only; exported as rowwise
from torchtitan.components.quantization import Float8LinearConverter
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC
from torchtitan.models.common import ComplexRoPE
from torchtitan.models.llama3 import config_registry, model_registry
from torchtitan.trainer import Trainer


def _model_spec(converters):
    spec = model_registry('8B', converters=converters or None)
    # the model's RoPE and norm eps, where TorchTitan's builder sets others
    for layer in spec.model.layers:
        layer.attention.rope = ComplexRoPE.Config(dim=layer.attention.rope.dim, max_seq_len=8192, theta=500000.0, scaling='none')
    return spec


def loadmaster_plan() -> Trainer.Config:
    config = config_registry.llama3_8b()
    config.model_spec = _model_spec([Float8LinearConverter.Config(recipe_name='rowwise', filter_fqns=['lm_head', 'layers.24.', 'layers.25.', 'layers.26.', 'layers.27.', 'layers.28.', 'layers.29.', 'layers.30.', 'layers.31.'], model_compile_enabled=True)])
    config.training = TrainingConfig(
        local_batch_size=2,
        global_batch_size=64,
        seq_len=8192,
        steps=config.training.steps,
        enable_cpu_offload=True,
        disable_cuda_graphs=False,  # TorchTitan 0.3 captures no CUDA graph under PP
    )
    config.parallelism = ParallelismConfig(
        data_parallel_shard_degree=8,
        data_parallel_replicate_degree=1,
        fsdp_reshard_after_forward='default',
        tensor_parallel_degree=1,
        enable_sequence_parallel=True,
        pipeline_parallel_degree=1,
    )
    config.activation_checkpoint = FullAC.Config()
    config.compile = CompileConfig(enable=True, components=["model", "loss"])
    return config

"""TorchTitan 0.3.0 config (it needs torch 2.13) written by `loadmaster export` from
llama3-8b-fsdp.yaml for llama3.1-8b.

Run it with this folder on PYTHONPATH (launch.sh does):
  torchrun --nnodes 1 --nproc-per-node 8 -m torchtitan.train --module loadmaster_torchtitan --config loadmaster_plan
Flags after it override fields, e.g. --training.steps 100.
"""
# Plan knobs TorchTitan cannot express as planned:
#   recompute selective: TorchTitan's SelectiveAC also recomputes every second matmul (loadmaster saves every matmul output): less memory, more recompute than predicted
from torchtitan.components.quantization import Float8LinearConverter
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC
from torchtitan.models.common import ComplexRoPE
from torchtitan.models.llama3 import config_registry, model_registry
from torchtitan.trainer import Trainer


def _model_spec(converters):
    spec = model_registry('8B', converters=converters or None)
    return spec


def loadmaster_plan() -> Trainer.Config:
    config = config_registry.llama3_8b()
    config.model_spec = _model_spec([])
    config.training = TrainingConfig(
        local_batch_size=2,
        global_batch_size=16,
        seq_len=8192,
        steps=config.training.steps,
        enable_cpu_offload=False,
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
    config.activation_checkpoint = SelectiveAC.Config()
    config.compile = CompileConfig(enable=False, components=["model", "loss"])
    return config

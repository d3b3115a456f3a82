"""TorchTitan (0.2.2) on synthetic tokens, driven from here: the other engine of runtime_vs_torchtitan.py.

    python -m benchmarks.gpu.torchtitan_synth --plans PLANS.json --out LINES.jsonl [--steps 12] [--warmup 2]
        [--deadline-unix T]

PLANS.json is a list of {name, model (a loadmaster model file), plan (a loadmaster plan)} for one GPU. For each,
this builds TorchTitan's own Trainer through its public registration API (``register_train_spec``): its llama3
model with a flavor made from the model file, a synthetic-token dataloader (uniform random ids; no tokenizer,
no HF ``datasets``), and on one GPU FSDP2 on a one-rank mesh instead of TorchTitan's default there (an unwrapped
fp32 model under autocast), so both engines run the same plan: bf16 compute, fp32 master weights, AdamW, fp32
gradient reduction, re-sharding after forward. Settings mapped: local/global batch, sequence, checkpointing
(``selective`` is TorchTitan's per-op policy, which recomputes every second matmul; loadmaster's saves them
all), compile (blocks and the loss, TorchTitan's default components), float8 (tensorwise, the lm head left in
bf16, torchao's size filter: ``auto_filter_small_kn``). Steps are timed here around ``Trainer.train_step`` with
the GPU synchronised; peak memory is torch.cuda.max_memory_allocated over all steps, as loadmaster records it.
One JSON line per plan (``engine: torchtitan``) is appended to --out as it finishes; a plan that fails is a line
with ``error``. Plans that would not finish before --deadline-unix are skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import socket
import statistics
import sys
import time
import types
from pathlib import Path

SPEC_NAME = "loadmaster_synth"


def _stub_hf_packages() -> None:
    """torchtitan imports HF ``tokenizers`` and its HF-datasets loaders at import time; where those packages are
    missing they become stubs that raise if used (the synthetic spec has no tokenizer and its own loader)."""
    def unavailable(*args, **kwargs):
        raise RuntimeError("not installed: this driver trains on synthetic tokens without a tokenizer")
    if importlib.util.find_spec("datasets") is None:
        stub = types.ModuleType("torchtitan.hf_datasets.text_datasets")
        stub.build_text_dataloader = unavailable
        stub.build_text_validation_dataloader = unavailable
        sys.modules["torchtitan.hf_datasets.text_datasets"] = stub
    if importlib.util.find_spec("tokenizers") is None:
        stub = types.ModuleType("tokenizers")
        stub.AddedToken = stub.Tokenizer = type("Unavailable", (), {"__init__": unavailable,
                                                                    "from_file": staticmethod(unavailable)})
        sys.modules["tokenizers"] = stub


def flavor(spec):
    """TorchTitan llama3 model args of a loadmaster ModelSpec. TorchTitan sizes the MLP as multiple_of ·
    ceil(int(8·dim/3) / multiple_of); with multiple_of = intermediate_size that is intermediate_size whenever
    intermediate_size ≥ 8·dim/3 (every Llama shape here)."""
    from torchtitan.models.llama3.model.args import TransformerModelArgs
    if int(8 * spec.hidden_size / 3) > spec.intermediate_size or not spec.gated_mlp or spec.tie_word_embeddings:
        raise ValueError(f"{spec.name}: TorchTitan's llama3 needs an untied SwiGLU model with intermediate_size ≥ "
                         "8·hidden/3")
    if int(spec.head_dim) != spec.hidden_size // spec.num_attention_heads:
        raise ValueError(f"{spec.name}: TorchTitan's llama3 takes head_dim = hidden_size / heads")
    return TransformerModelArgs(dim=spec.hidden_size, n_layers=spec.num_hidden_layers,
                                n_heads=spec.num_attention_heads, n_kv_heads=spec.kv_heads,
                                vocab_size=spec.vocab_size, multiple_of=spec.intermediate_size,
                                ffn_dim_multiplier=None, norm_eps=spec.rms_norm_eps, rope_theta=spec.rope_theta)


def register(flavors: dict) -> None:
    """Register the synthetic-token llama3 train spec with ``flavors`` (name -> model args)."""
    import torch
    from torch.utils.data import IterableDataset
    from torchtitan.components.dataloader import ParallelAwareDataloader
    from torchtitan.config import TORCH_DTYPE_MAP
    from torchtitan.models.llama3.infra.parallelize import apply_fsdp, parallelize_llama
    from torchtitan.protocols.train_spec import get_train_spec, register_train_spec
    import torchtitan.distributed.utils as dist_utils

    class SyntheticTokens(IterableDataset):
        def __init__(self, vocab_size: int, seq_len: int, seed: int) -> None:
            self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

        def __iter__(self):
            g = torch.Generator().manual_seed(self.seed)
            while True:
                x = torch.randint(0, self.vocab_size, (self.seq_len + 1,), generator=g)
                yield {"input": x[:-1]}, x[1:]

    def dataloader(dp_world_size, dp_rank, tokenizer, job_config, infinite=True):
        vocab = flavors[job_config.model.flavor].vocab_size
        return ParallelAwareDataloader(SyntheticTokens(vocab, job_config.training.seq_len, 1234 + dp_rank),
                                       dp_rank=dp_rank, dp_world_size=dp_world_size,
                                       batch_size=job_config.training.local_batch_size)

    def parallelize(model, parallel_dims, job_config):
        model = parallelize_llama(model, parallel_dims, job_config)
        if parallel_dims.world_size == 1 and not parallel_dims.fsdp_enabled:   # one GPU: FSDP2 on one rank
            from torch.distributed.device_mesh import init_device_mesh
            mesh = init_device_mesh("cuda", (1,), mesh_dim_names=("fsdp",))
            apply_fsdp(model, mesh, param_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_param],
                       reduce_dtype=TORCH_DTYPE_MAP[job_config.training.mixed_precision_reduce], pp_enabled=False,
                       cpu_offload=False, reshard_after_forward_policy="default")
        return model

    original_amp = dist_utils.maybe_enable_amp

    def maybe_enable_amp(parallel_dims, mixed_precision_param, device_type):
        if parallel_dims.world_size == 1 and not parallel_dims.fsdp_enabled:
            import contextlib
            return contextlib.nullcontext()   # FSDP2's mixed precision instead of autocast
        return original_amp(parallel_dims, mixed_precision_param, device_type)
    dist_utils.maybe_enable_amp = maybe_enable_amp
    base = get_train_spec("llama3")
    register_train_spec(SPEC_NAME, dataclasses.replace(
        base, model_args=flavors, parallelize_fn=parallelize, build_dataloader_fn=dataloader,
        build_tokenizer_fn=None, build_validator_fn=None))


def job_config(entry: dict, *, steps: int, dump: str):
    """TorchTitan's JobConfig for one loadmaster plan on one GPU."""
    from torchtitan.config import JobConfig
    plan = entry["plan"]
    if plan.get("dp", 1) * plan.get("tp", 1) * plan.get("pp", 1) != 1:
        raise ValueError("this driver runs one-GPU plans")
    c = JobConfig()
    c.job.dump_folder, c.job.description = dump, entry["name"]
    c.metrics.log_freq, c.metrics.enable_tensorboard, c.metrics.disable_color_printing = 10**6, False, True
    c.model.name, c.model.flavor = SPEC_NAME, entry["name"]
    c.model.hf_assets_path = dump   # unused: no tokenizer, no checkpoint
    c.optimizer.name, c.optimizer.lr, c.optimizer.implementation = "AdamW", 3e-4, "fused"
    c.lr_scheduler.warmup_steps = 1
    c.training.local_batch_size = plan["micro_batch_size"]
    c.training.global_batch_size = plan["global_batch_size"]
    c.training.seq_len, c.training.steps, c.training.max_norm = plan["seq_len"], steps, 1.0
    c.training.dtype, c.training.mixed_precision_param, c.training.mixed_precision_reduce = \
        "float32", "bfloat16", "float32"
    c.checkpoint.enable, c.validation.enable = False, False
    recompute = plan.get("recompute", "none")
    if plan.get("recompute_layers") not in (None,):
        raise ValueError("TorchTitan checkpoints every block or none (recompute_layers must be null)")
    c.activation_checkpoint.mode = recompute
    c.activation_checkpoint.selective_ac_option = "op"
    c.compile.enable = bool(plan.get("compile"))
    c.compile.components = ["model", "loss"]
    if plan.get("fp8_layers"):
        c.model.converters = ["quantize.linear.float8"]
        c.quantize.linear.float8.filter_fqns = ["output", "auto_filter_small_kn"]
        if plan.get("fp8_recipe", "tensorwise") != "tensorwise":
            c.quantize.linear.float8.recipe_name = plan["fp8_recipe"]
    return c


def measure(entry: dict, *, steps: int, warmup: int, dump: str) -> dict:
    """Build TorchTitan's Trainer for one entry, time ``steps`` steps, tear it down."""
    import torch
    from torchtitan.train import Trainer
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(job_config(entry, steps=steps, dump=dump))
    try:
        data = trainer.batch_generator(trainer.dataloader)
        times = []
        for _ in range(steps):
            trainer.step += 1
            trainer.gc_handler.run(trainer.step)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_step(data)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated()
    finally:
        trainer.close()
        del trainer
        gc.collect()
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    plan = entry["plan"]
    step_s = statistics.median(times[warmup:])
    return {"step_time_s": step_s, "tokens_per_s_per_gpu": plan["global_batch_size"] * plan["seq_len"] / step_s,
            "peak_memory_bytes": float(peak), "step_times_s": times, "steps_measured": len(times) - warmup}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", required=True, help="JSON list of {name, model, plan}")
    ap.add_argument("--out", required=True, help="JSON Lines file to append one line per plan to")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--deadline-unix", type=float, default=float("inf"))
    args = ap.parse_args(argv)
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port()))):
        os.environ.setdefault(key, value)
    _stub_hf_packages()
    import torch
    import torchtitan
    from costmodel import load_model
    entries = json.loads(Path(args.plans).read_text())
    flavors, problems = {}, {}
    for e in entries:
        try:
            flavors[e["name"]] = flavor(load_model(e["model"]))
        except ValueError as err:
            problems[e["name"]] = str(err)
    register(flavors)
    version = getattr(torchtitan, "__version__", None)
    dump = str(Path(args.out).parent / "torchtitan_dump")
    took = 0.0
    for e in entries:
        line = {"plan": e["name"], "engine": "torchtitan", "gpu": torch.cuda.get_device_name(),
                "torchtitan": version, "torch": torch.__version__, "model": e["model"], "plan_knobs": e["plan"]}
        if e["name"] in problems:
            line["error"] = problems[e["name"]]
        elif time.time() + 1.2 * took > args.deadline_unix:
            line["error"] = "skipped: the budget would run out (previous plan took %.0f s)" % took
        else:
            t0 = time.perf_counter()
            try:
                line.update(measure(e, steps=args.steps, warmup=args.warmup, dump=dump))
            except Exception as err:  # noqa: BLE001 - one plan's failure (OOM, unsupported setting) is its line
                line["error"] = f"{type(err).__name__}: {err}"[:500]
                gc.collect()
                torch.cuda.empty_cache()
            took = time.perf_counter() - t0
            line["wall_s"] = took
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps({k: line.get(k) for k in ("plan", "engine", "step_time_s", "peak_memory_bytes", "error")}),
              flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

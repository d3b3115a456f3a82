"""Measure this node's GPUs and write a loadmaster hardware profile (`loadmaster profile` runs this).

    python -m launcher.gputools.profile [-o profiles/NAME.yaml] [--quick] [--name NAME] [--base PROFILE] [--json]
    torchrun --standalone --nproc-per-node N -m launcher.gputools.profile ...   # adds NCCL collectives and overlap

A single process measures compute (GEMMs, float8 GEMMs, attention), copies, CPU AdamW, launch overhead,
memory and the host-copy interference; under torchrun every rank runs the same measurements at once (as in
training) and the world group's collectives and their interference with compute are added; rank 0 writes
the profile. Fields not measured come from ``--base`` (default: the datasheet profile of the detected GPU).
Runs on GPU nodes: imports only torch, numpy, yaml, costmodel and launcher (scipy if present).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from costmodel.hardware import load_profile, parse_profile
from costmodel.specs import PROFILES, load_model

from launcher.gputools import profile_comm as comm
from launcher.gputools import profile_compute as compute
from launcher.gputools.profile_assemble import (Measurements, assemble_profile, base_profile_for_gpu, merge_ranks,
                                                summary_lines)
from launcher.gputools.profile_shapes import (model_attention_shapes, model_gemm_shapes, recipe_models, spread,
                                              square_shapes)
from launcher.gputools.profile_timing import TimingConfig, is_cuda

NO_GPU = "profile needs a CUDA GPU; run it on a GPU node"


@dataclass(kw_only=True, slots=True)
class ProfileConfig:
    """What to measure and for how long; ``full()`` and ``quick()`` are the two presets."""

    timing: TimingConfig = field(default_factory=TimingConfig)
    """Repeats, sample length and warm-up of every timed measurement."""
    warmup_gpu_s: float = 2.0
    """Seconds of large GEMMs before anything is timed (clocks and power settle)."""
    models: tuple[str, ...] | None = None
    """Model recipes (names or paths) whose shapes are measured; None: every shipped recipe."""
    gemm_tokens: tuple[int, ...] = (2048, 4096, 8192, 16384)
    """Tokens per micro-batch (the GEMMs' m)."""
    tp_degrees: tuple[int, ...] = (1, 2, 4, 8)
    """Tensor-parallel degrees whose per-rank projection shapes are measured."""
    square_sizes: tuple[int, ...] = (1024, 2048, 4096, 8192)
    """Square GEMMs measured besides the model shapes (8192^3 is the headline number)."""
    num_gemm_shapes: int | None = None
    """Model GEMM shapes kept, evenly spread by log FLOPs; None: all of them (~650)."""
    num_fp8_shapes: int | None = 120
    """float8 GEMM shapes kept (same selection); 0 skips float8."""
    attention_seq_lens: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384)
    """Sequence lengths of the SDPA calls."""
    attention_head_dims: tuple[int, ...] = (64, 128)
    """Head dims measured (models with other head dims are left out)."""
    attention_tokens: int = 16384
    """Tokens per SDPA call: batch = attention_tokens // seq."""
    num_attention_shapes: int | None = 64
    """SDPA shapes kept (each new shape also builds a cuDNN plan, which costs time)."""
    comm_sizes: tuple[int, ...] = tuple(2**k for k in range(16, 31))
    """Collective message sizes in bytes (64 KiB ... 1 GiB)."""
    hbm_copy_bytes: int = 2**30
    """Size of the device copy (far above L2)."""
    host_copy_bytes: int = 256 * 2**20
    """Size of the pinned host copies."""
    adam_params: int = 64 * 2**20
    """Parameters in the CPU AdamW measurement."""
    overlap_window_s: float = 0.05
    """Length of each concurrent GEMM/side-work window."""
    overlap_repeats: int = 3
    """Windows per overlap factor (median)."""

    @classmethod
    def full(cls) -> "ProfileConfig":
        return cls(timing=TimingConfig(repeats=9, sample_s=0.005, warmup_s=0.02))

    @classmethod
    def quick(cls) -> "ProfileConfig":
        """Under two minutes on one GPU: fewer shapes, sizes and repeats."""
        return cls(timing=TimingConfig(repeats=5, sample_s=0.002, warmup_s=0.01), warmup_gpu_s=0.5,
                   num_gemm_shapes=24, num_fp8_shapes=12, num_attention_shapes=10,
                   comm_sizes=tuple(2**k for k in range(16, 31, 2)), hbm_copy_bytes=512 * 2**20,
                   host_copy_bytes=128 * 2**20, adam_params=16 * 2**20, overlap_window_s=0.03, overlap_repeats=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m launcher.gputools.profile", description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", help="profile YAML to write (default: profiles/<name>.yaml)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats (< 2 minutes)")
    p.add_argument("--name", help="profile name (default: <base>-measured, which clusters of that GPU pick up)")
    p.add_argument("--base", help="profile (name or path) for the fields not measured (default: by GPU name)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON on stdout (summary on stderr)")
    return p.parse_args(argv)


class _Log:
    """Progress lines on rank 0's stderr, each with the seconds since start."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.t0 = enabled, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def measure_compute(cfg: ProfileConfig, device: torch.device, m: Measurements, log: _Log) -> None:
    """Everything one GPU measures alone (every rank runs it concurrently under torchrun)."""
    compute.warm_up_gpu(device, cfg.warmup_gpu_s)
    models = recipe_models() if cfg.models is None else [load_model(ref) for ref in cfg.models]
    shapes = spread(model_gemm_shapes(models, cfg.gemm_tokens, cfg.tp_degrees), cfg.num_gemm_shapes,
                    key=lambda s: s.flops)
    gemm_shapes = sorted(set(shapes) | set(square_shapes(cfg.square_sizes)), key=lambda s: s.flops)
    log(f"bf16 GEMM: {len(gemm_shapes)} shapes")
    m.gemm = compute.measure_gemm(gemm_shapes, device, cfg.timing, log=log)
    ok, why = compute.fp8_supported(device) if cfg.num_fp8_shapes != 0 else (False, "num_fp8_shapes is 0")
    if ok:
        fp8_shapes = spread(gemm_shapes, cfg.num_fp8_shapes, key=lambda s: s.flops)
        log(f"float8 GEMM: {len(fp8_shapes)} shapes")
        m.fp8_gemm = compute.measure_fp8_gemm(fp8_shapes, device, cfg.timing, log=log)
        row_shapes = spread(fp8_shapes, max(3, len(fp8_shapes) // 3), key=lambda s: s.flops)
        log(f"float8 rowwise GEMM: {len(row_shapes)} shapes")
        try:
            m.fp8_rowwise_gemm = compute.measure_fp8_gemm(row_shapes, device, cfg.timing, rowwise=True, log=log)
        except RuntimeError as e:  # rowwise scaled_mm needs sm90+ and a recent cuBLAS
            log(f"float8 rowwise GEMM skipped: {str(e).splitlines()[0]}")
    else:
        m.fp8_note = why
        log(f"float8 GEMM skipped: {why}")
    attn = spread(model_attention_shapes(models, cfg.attention_seq_lens, cfg.attention_head_dims,
                                         cfg.tp_degrees, cfg.attention_tokens), cfg.num_attention_shapes,
                  key=lambda s: s.flops)
    log(f"SDPA causal fwd+bwd: {len(attn)} shapes")
    m.attention = compute.measure_attention(attn, device, cfg.timing, log=log)
    log("HBM copy, pinned host copies, launch overhead")
    m.hbm_gbps = compute.measure_copy_bandwidth(device, cfg.hbm_copy_bytes, cfg.timing)
    if is_cuda(device):
        m.h2d_gbps, m.d2h_gbps = compute.measure_host_copy(device, cfg.host_copy_bytes, cfg.timing)
    m.kernel_launch_s = compute.measure_launch_overhead(device)


def measure_host_and_overlap(cfg: ProfileConfig, device: torch.device, m: Measurements, log: _Log) -> None:
    """CPU AdamW with one GPU's share of the cores, and the GEMM slowdown beside a host copy."""
    gpus_per_node = max(1, torch.cuda.device_count() if is_cuda(device) else 1)
    threads = max(1, compute.host_cores() // gpus_per_node)
    log(f"CPU AdamW: {cfg.adam_params / 1e6:.0f}M params, {threads} threads")
    if dist.is_initialized():
        dist.barrier()  # all ranks step at once, as offloaded optimizers do
    m.cpu_adam_params_per_s, impl = compute.measure_cpu_adamw(cfg.adam_params, threads)
    m.cpu_adam_threads = threads
    if impl != "fused":
        log(f"  fused CPU AdamW unavailable; measured {impl}")
    if is_cuda(device):
        log("overlap: GEMM beside pinned H2D copies")
        m.h2d_compute_slowdown = comm.measure_h2d_overlap(device, cfg.timing, window_s=cfg.overlap_window_s,
                                                          repeats=cfg.overlap_repeats)
        if m.world_size == 1:   # no second GPU: an NCCL kernel's SM and memory footprint, emulated
            log(f"overlap: GEMM beside a copy kernel on {comm.NCCL_CTAS_HOPPER} SMs (an NCCL collective's)")
            m.comm_compute_slowdown, gbps = comm.measure_emulated_comm_overlap(
                device, cfg.timing, window_s=cfg.overlap_window_s, repeats=cfg.overlap_repeats)
            m.comm_overlap_note = (f"comm_compute_slowdown emulated on one GPU: GEMMs beside a copy kernel on "
                                   f"{comm.NCCL_CTAS_HOPPER} SMs ({gbps:.0f} GB/s), NCCL's CTAs on Hopper")


def measure_collectives(cfg: ProfileConfig, device: torch.device, m: Measurements, log: _Log) -> None:
    log(f"NCCL collectives on {m.world_size} GPUs: {len(cfg.comm_sizes)} sizes x {len(comm.COLLECTIVES)} ops")
    m.collectives = comm.measure_collectives(cfg.comm_sizes, device, cfg.timing)
    log("overlap: GEMM beside NCCL all-gather")
    m.comm_compute_slowdown, m.comm_efficiency = comm.measure_comm_overlap(
        device, cfg.timing, window_s=cfg.overlap_window_s, repeats=cfg.overlap_repeats)


def _command_line(argv: list[str], world: int) -> str:
    args = " ".join(argv)
    if world > 1:
        return f"torchrun --standalone --nproc-per-node {world} -m launcher.gputools.profile {args}".strip()
    return f"python -m launcher.gputools.profile {args}".strip()


def _setup_distributed() -> tuple[torch.device, int, int]:
    """(device, rank, world size); initialises NCCL when started by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and int(os.environ.get("LOCAL_WORLD_SIZE", world)) != world:
        raise ValueError(f"profile measures one node, but WORLD_SIZE {world} spans several nodes; "
                         "run torchrun with --nnodes 1 (inter_node is kept from --base)")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl", device_id=device)
        return device, dist.get_rank(), world
    return device, 0, 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    rank = 0
    try:
        device, rank, world = _setup_distributed()
        run(args, argv, device, rank, world, ProfileConfig.quick() if args.quick else ProfileConfig.full())
    except ValueError as e:  # SpecError included: one line, exit code 2 (torchrun then stops the other ranks)
        print(f"error: rank {rank}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


def run(args: argparse.Namespace, argv: list[str], device: torch.device, rank: int, world: int,
        cfg: ProfileConfig) -> None:
    """Measure on every rank, merge on rank 0, write the profile and print the summary there.

    On a CPU device (tests) the CUDA-only measurements are left out and their fields come from the base.
    """
    log = _Log(rank == 0)
    if is_cuda(device):
        props = torch.cuda.get_device_properties(device)
        gpu_name, total_memory = props.name, props.total_memory
    else:
        gpu_name, total_memory = "cpu", 0
    base = load_profile(args.base or base_profile_for_gpu(gpu_name, total_memory))
    name = args.name or f"{base.name}-measured"
    out = Path(args.output) if args.output else PROFILES / f"{name}.yaml"
    if not out.parent.is_dir():  # every rank checks, so none is left waiting in a collective
        raise ValueError(f"output folder {out.parent} does not exist; create it or pass another -o")
    m = Measurements(gpu_name=gpu_name, torch_version=torch.__version__, world_size=world,
                     date=datetime.date.today().isoformat(), command=_command_line(argv, world))
    log(f"{gpu_name} x{world}, base profile {base.name}, {'quick' if args.quick else 'full'} run")
    measure_compute(cfg, device, m, log)
    measure_host_and_overlap(cfg, device, m, log)
    if world > 1:
        measure_collectives(cfg, device, m, log)
    if is_cuda(device):
        m.memory_gib, m.context_gib = compute.measure_memory(device)  # last: every library has initialised
    if world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(m, gathered, dst=0)
        if rank != 0:
            return
        m = merge_ranks(gathered)
    prof = assemble_profile(m, base, name=name)
    text = prof.to_yaml()
    if parse_profile(yaml.safe_load(text), out) != prof:  # the file must load back to the same profile
        raise AssertionError("profile YAML does not round-trip; please report this")
    out.write_text(text, encoding="utf-8")
    log(f"wrote {out}")
    summary = "\n".join(summary_lines(prof, m, base))
    if args.json:
        print(summary, file=sys.stderr, flush=True)
        print(json.dumps(prof.to_dict(), indent=2), flush=True)
    else:
        print(summary, flush=True)


if __name__ == "__main__":
    sys.exit(main())

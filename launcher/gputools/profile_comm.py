"""Collectives and interference, measured by `loadmaster profile` under torchrun (overlap also single-GPU).

Every rank runs the same calls in the same order: counts per sample are fixed functions of the message size
(never of a rank's own timings), and counts derived from timings use values max-reduced over ranks, so no
rank waits in a collective the others never issue.
"""
from __future__ import annotations

import math
import statistics
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from launcher.gputools.profile_timing import TimingConfig, prefill_stream, time_per_call

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")

# torch 2.13 renamed the tensor collectives (*_single, same arguments); 2.11 on the GPU nodes has the old names.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

# Host cost of enqueuing one NCCL call, generously: sizes the GPU-side wait that lets a sample be enqueued
# before it runs (see profile_timing).
_NCCL_ENQUEUE_S = 20e-6


def comm_counts(nbytes: int) -> int:
    """Calls per sample for a message size: ~256 MiB moved per sample, between 1 and 100 calls."""
    return max(1, min(100, round(256 * 2**20 / nbytes)))


def _collective(op: str, nbytes: int, device: torch.device) -> Callable[[int], object]:
    """One call of ``op`` moving an ``nbytes`` message (NCCL-tests convention: the all-gather output, the
    reduce-scatter input). Reductions run in fp32 with AVG as the trainer's gradient reduction does;
    all-gathers and point-to-point carry bf16 as FSDP2's parameter all-gather does."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if op == "all_reduce":
        buf = torch.randn(nbytes // 4, device=device)
        return lambda i: dist.all_reduce(buf, op=dist.ReduceOp.AVG)
    if op == "all_gather":
        out = torch.empty(nbytes // 2, device=device, dtype=torch.bfloat16)
        inp = torch.randn(nbytes // 2 // world, device=device, dtype=torch.bfloat16)
        return lambda i: _all_gather(out, inp)
    if op == "reduce_scatter":
        inp = torch.randn(nbytes // 4, device=device)
        out = torch.empty(nbytes // 4 // world, device=device)
        return lambda i: _reduce_scatter(out, inp, op=dist.ReduceOp.AVG)
    if op == "all_to_all":
        # expert parallelism's dispatch and combine: every rank sends size / n of its bf16 tokens to each rank
        inp = torch.randn(nbytes // 2, device=device, dtype=torch.bfloat16)
        out = torch.empty_like(inp)
        return lambda i: dist.all_to_all_single(out, inp)
    if op == "send_recv":
        # A ring: every rank sends to the next and receives from the previous at once (as pipeline stages do).
        send = torch.randn(nbytes // 2, device=device, dtype=torch.bfloat16)
        recv = torch.empty_like(send)
        peers = ((rank + 1) % world, (rank - 1) % world)

        def p2p(i: int) -> None:
            ops = [dist.P2POp(dist.isend, send, peers[0]), dist.P2POp(dist.irecv, recv, peers[1])]
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        return p2p
    raise ValueError(f"unknown collective {op!r}; use one of {', '.join(COLLECTIVES)}")


def measure_collectives(sizes: Sequence[int], device: torch.device, cfg: TimingConfig, *,
                        ops: Sequence[str] = COLLECTIVES) -> dict[str, list[list[float]]]:
    """{op: [[bytes, seconds per call], ...]} on the world group, this rank's view.

    Merge the ranks' tables with the max (a collective ends when its slowest rank does).
    """
    world = dist.get_world_size()
    table: dict[str, list[list[float]]] = {}
    for op in ops:
        rows = []
        for size in sizes:
            # Every rank's shard must be whole fp32 elements: round down to a multiple of 4 x world size.
            nbytes = size - size % (4 * world)
            if nbytes <= 0:
                raise ValueError(f"message size {size} is below 4 x world size {world} bytes; use 64 KiB or more")
            call = _collective(op, nbytes, device)
            inner = comm_counts(nbytes)
            dist.barrier()
            sec = time_per_call(call, device, cfg, inner=inner, warmup_calls=3,
                                prefill_s=inner * _NCCL_ENQUEUE_S, before_sample=dist.barrier)
            rows.append([float(nbytes), sec])
            del call
        table[op] = rows
    return table


def _max_over_ranks(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _concurrent(device: torch.device, main: Callable[[int], object], n_main: int,
                side: Callable[[int], object], n_side: int, prefill_s: float) -> tuple[float, float]:
    """Run ``n_main`` calls on one stream and ``n_side`` on another, released together from a GPU wait.

    Returns (seconds per main call, seconds per side call) measured by events on each stream.
    """
    cur = torch.cuda.current_stream(device)
    s_main, s_side = torch.cuda.Stream(device), torch.cuda.Stream(device)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    go = torch.cuda.Event()
    prefill_stream(prefill_s, cur)
    go.record(cur)
    for stream in (s_main, s_side):
        stream.wait_event(go)
    with torch.cuda.stream(s_side):
        ev[2].record()
        for i in range(n_side):
            side(i)
        ev[3].record()
    with torch.cuda.stream(s_main):
        ev[0].record()
        for i in range(n_main):
            main(i)
        ev[1].record()
    torch.cuda.synchronize(device)
    cur.wait_stream(s_main)
    cur.wait_stream(s_side)
    return ev[0].elapsed_time(ev[1]) / 1e3 / n_main, ev[2].elapsed_time(ev[3]) / 1e3 / n_side


def _interference(device: torch.device, cfg: TimingConfig, gemm: Callable[[int], object],
                  side: Callable[[int], object], side_kwargs: dict, window_s: float,
                  repeats: int, sync: Callable[[], None]) -> tuple[float, float]:
    """(compute slowdown, side efficiency) of a GEMM loop beside a ``side`` loop.

    Slowdown: the side loop outlasts the GEMMs (1.5x the window), so every GEMM runs with it beside.
    Efficiency: the GEMMs outlast the side loop, so every side call runs with compute beside.
    """
    t_gemm = _max_over_ranks(time_per_call(gemm, device, cfg), device)
    t_side = _max_over_ranks(time_per_call(side, device, cfg, **side_kwargs), device)
    slow, eff = [], []
    for _ in range(repeats):
        n_g, n_s = math.ceil(window_s / t_gemm), math.ceil(1.5 * window_s / t_side)
        sync()
        g, _s = _concurrent(device, gemm, n_g, side, n_s, (n_g + n_s) * _NCCL_ENQUEUE_S)
        slow.append(g / t_gemm - 1.0)
        n_g, n_s = math.ceil(1.5 * window_s / t_gemm), math.ceil(window_s / t_side)
        sync()
        _g, s = _concurrent(device, gemm, n_g, side, n_s, (n_g + n_s) * _NCCL_ENQUEUE_S)
        eff.append(t_side / s)
    return statistics.median(slow), statistics.median(eff)


def _gemm_call(device: torch.device, size: int) -> Callable[[int], object]:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(a)
    return lambda i: torch.mm(a, b, out=out)


def measure_comm_overlap(device: torch.device, cfg: TimingConfig, *, gemm_size: int = 8192,
                         nbytes: int = 256 * 2**20, window_s: float = 0.05, repeats: int = 3) -> tuple[float, float]:
    """(comm_compute_slowdown, comm_efficiency): a large bf16 GEMM loop beside an NCCL all-gather loop
    (FSDP2's forward: the next block's parameters gather while this block computes)."""
    gemm = _gemm_call(device, gemm_size)
    ag = _collective("all_gather", nbytes, device)
    inner = comm_counts(nbytes)
    kwargs = dict(inner=inner, warmup_calls=3, prefill_s=inner * _NCCL_ENQUEUE_S, before_sample=dist.barrier)
    return _interference(device, cfg, gemm, ag, kwargs, window_s, repeats, dist.barrier)


def measure_h2d_overlap(device: torch.device, cfg: TimingConfig, *, gemm_size: int = 8192,
                        nbytes: int = 256 * 2**20, window_s: float = 0.05, repeats: int = 3) -> float:
    """h2d_compute_slowdown: a large bf16 GEMM loop beside pinned host-to-device copies (offload's prefetch)."""
    gemm = _gemm_call(device, gemm_size)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host.copy_(torch.randint(0, 256, (nbytes,), device=device, dtype=torch.uint8))
    dev = torch.empty(nbytes, device=device, dtype=torch.uint8)
    sync = dist.barrier if dist.is_initialized() else (lambda: torch.cuda.synchronize(device))
    slow, _ = _interference(device, cfg, gemm, lambda i: dev.copy_(host, non_blocking=True), {}, window_s,
                            repeats, sync)
    return slow


NCCL_CTAS_HOPPER = 18
"""SMs an NCCL collective holds on a Hopper GPU: one CTA per channel, which never shares its SM with compute
(NVIDIA/nccl#689, #1656), and "Hopper generation GPUs have 18 NVLink channels between the GPU and NVSwitch and
the number of NCCL channels is directly related to that" (NCCL maintainer, NVIDIA/nccl#1429)."""


def _copy_kernel():
    """A copy that runs on exactly as many SMs as it is launched with (a grid-stride loop per CTA)."""
    import triton
    import triton.language as tl

    @triton.jit
    def copy(src, dst, n, BLOCK: tl.constexpr):
        pid, nprog = tl.program_id(0), tl.num_programs(0)
        for start in range(pid * BLOCK, n, nprog * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n
            tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)
    return copy


def measure_emulated_comm_overlap(device: torch.device, cfg: TimingConfig, *, ctas: int = NCCL_CTAS_HOPPER,
                                  gemm_size: int = 8192, nbytes: int = 256 * 2**20, window_s: float = 0.05,
                                  repeats: int = 3) -> tuple[float, float]:
    """(comm_compute_slowdown, the emulator's copy bandwidth in GB/s) on one GPU: a large bf16 GEMM loop beside a
    copy kernel holding ``ctas`` SMs — an NCCL kernel's footprint (its CTAs take whole SMs and stream through
    HBM) without a second GPU. The NVLink side of a real collective is not loaded, so this bounds the slowdown
    from the SMs and memory it takes, which is what the GEMMs feel."""
    gemm = _gemm_call(device, gemm_size)
    src = torch.randn(nbytes // 2, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    kernel = _copy_kernel()
    side = lambda i: kernel[(ctas,)](src, dst, src.numel(), BLOCK=4096, num_warps=16)  # noqa: E731
    t_side = time_per_call(side, device, cfg)
    slow, _ = _interference(device, cfg, gemm, side, {}, window_s, repeats,
                            lambda: torch.cuda.synchronize(device))
    return slow, 2 * nbytes / t_side / 1e9

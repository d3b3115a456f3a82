"""One function per single-device measurement of `loadmaster profile` (GEMMs, attention, copies, CPU AdamW).

Each takes a device and a TimingConfig and returns plain numbers or lists of dicts (seconds per call);
turning them into efficiencies and curves is profile_assemble's job. Every function also runs on a CPU
device with tiny sizes, which is how the tests exercise them.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from launcher.gputools.profile_shapes import AttentionShape, GemmShape
from launcher.gputools.profile_timing import (TimingConfig, host_time_per_call, is_cuda, rotation_count, synchronize,
                                              time_per_call)

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def l2_cache_bytes(device: torch.device) -> int:
    """The GPU's L2 size (what rotated buffers must exceed); 0 on CPU, where no rotation is done."""
    if not is_cuda(device):
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20))


def free_bytes(device: torch.device) -> int | None:
    """Device memory a new tensor can get (free plus the allocator's cached, unused blocks); None on CPU."""
    if not is_cuda(device):
        return None
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(torch.cuda.mem_get_info(device)[0] + cached)


def _fits(need: int, device: torch.device, fraction: float = 0.6) -> bool:
    free = free_bytes(device)
    return free is None or need <= fraction * free


def warm_up_gpu(device: torch.device, seconds: float) -> None:
    """Run large GEMMs for ``seconds`` so clocks and power settle before anything is timed."""
    if not is_cuda(device) or seconds <= 0:
        return
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ a
        synchronize(device)


def measure_gemm(shapes: Sequence[GemmShape], device: torch.device, cfg: TimingConfig, *,
                 dtype: torch.dtype = torch.bfloat16, log: Log = _quiet) -> list[dict]:
    """Seconds per ``x @ W.T`` for each shape (random normal operands, rotated past L2)."""
    results = []
    cache = l2_cache_bytes(device)
    size = torch.tensor([], dtype=dtype).element_size()
    for s in shapes:
        per_set = (s.m * s.k + s.n * s.k) * size
        nbuf = rotation_count(per_set, cache, most=16) if cache else 1
        if not _fits(nbuf * per_set + s.m * s.n * size, device):
            log(f"  skip GEMM {s.m}x{s.n}x{s.k}: does not fit in free memory")
            continue
        xs = [torch.randn(s.m, s.k, device=device, dtype=dtype) for _ in range(nbuf)]
        ws = [torch.randn(s.n, s.k, device=device, dtype=dtype) for _ in range(nbuf)]
        y = torch.empty(s.m, s.n, device=device, dtype=dtype)
        sec = time_per_call(lambda i: torch.mm(xs[i % nbuf], ws[i % nbuf].t(), out=y), device, cfg)
        results.append({"m": s.m, "n": s.n, "k": s.k, "seconds": sec})
        del xs, ws, y
    return results


def fp8_supported(device: torch.device) -> tuple[bool, str]:
    """Whether ``torch._scaled_mm`` with e4m3 runs here, and why not."""
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return False, f"torch {torch.__version__} has no float8_e4m3fn/_scaled_mm"
    if is_cuda(device) and torch.cuda.get_device_capability(device) < (8, 9):
        return False, f"compute capability {torch.cuda.get_device_capability(device)} < 8.9 has no float8 GEMM"
    try:
        a = torch.randn(32, 32, device=device).to(torch.float8_e4m3fn)
        one = torch.ones((), device=device, dtype=torch.float32)
        torch._scaled_mm(a, a.t(), one, one, out_dtype=torch.bfloat16)
        synchronize(device)
    except (RuntimeError, NotImplementedError) as e:
        return False, f"torch._scaled_mm failed: {str(e).splitlines()[0]}"
    return True, ""


def measure_fp8_gemm(shapes: Sequence[GemmShape], device: torch.device, cfg: TimingConfig, *,
                     rowwise: bool = False, log: Log = _quiet) -> list[dict]:
    """Seconds per tensorwise-scaled e4m3 GEMM (torchao's float8 forward: fast accumulation, bf16 out), or with
    ``rowwise`` one fp32 scale per row of each operand (torchao's rowwise recipe; a different kernel).

    The second operand is column-major (a transposed row-major weight), as cuBLASLt requires; shapes
    with a dimension not a multiple of 16 are skipped (cuBLASLt's float8 alignment).
    """
    results = []
    cache = l2_cache_bytes(device)
    one = torch.ones((), device=device, dtype=torch.float32)
    for s in shapes:
        if s.m % 16 or s.n % 16 or s.k % 16:
            continue
        per_set = s.m * s.k + s.n * s.k
        nbuf = rotation_count(per_set, cache, most=16) if cache else 1
        if not _fits(nbuf * per_set + 2 * s.m * s.n, device):
            log(f"  skip float8 GEMM {s.m}x{s.n}x{s.k}: does not fit in free memory")
            continue
        # randn is within e4m3's range (max 448) with unit scales, and never all zeros.
        xs = [torch.randn(s.m, s.k, device=device).to(torch.float8_e4m3fn) for _ in range(nbuf)]
        ws = [torch.randn(s.n, s.k, device=device).to(torch.float8_e4m3fn) for _ in range(nbuf)]

        sa, sb = (torch.ones(s.m, 1, device=device), torch.ones(1, s.n, device=device)) if rowwise else (one, one)

        def call(i: int) -> torch.Tensor:
            return torch._scaled_mm(xs[i % nbuf], ws[i % nbuf].t(), sa, sb, out_dtype=torch.bfloat16,
                                    use_fast_accum=True)

        results.append({"m": s.m, "n": s.n, "k": s.k, "seconds": time_per_call(call, device, cfg)})
        del xs, ws
    return results


def _fused_sdpa_only(device: torch.device):
    """Never let SDPA fall back to the math kernel on GPU (it would materialise s x s scores and OOM)."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel
    if not is_cuda(device):
        return nullcontext()
    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def measure_attention(shapes: Sequence[AttentionShape], device: torch.device, cfg: TimingConfig, *,
                      log: Log = _quiet) -> list[dict]:
    """Seconds per causal SDPA forward + backward (bf16, GQA through ``enable_gqa``).

    No buffer rotation: attention does O(s) work per byte loaded, so L2 residency does not change its time.
    """
    results = []
    for s in shapes:
        q_bytes = s.batch * s.heads * s.seq * s.head_dim * 2
        kv_bytes = s.batch * s.kv_heads * s.seq * s.head_dim * 2
        if not _fits(4 * q_bytes + 6 * kv_bytes, device):
            log(f"  skip attention {s}: does not fit in free memory")
            continue
        q = torch.randn(s.batch, s.heads, s.seq, s.head_dim, device=device, dtype=torch.bfloat16,
                        requires_grad=True)
        k, v = (torch.randn(s.batch, s.kv_heads, s.seq, s.head_dim, device=device, dtype=torch.bfloat16,
                            requires_grad=True) for _ in range(2))
        dout = torch.randn_like(q)
        gqa = s.kv_heads != s.heads

        def call(i: int) -> tuple:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            # autograd.grad, not backward(): no accumulation into .grad, which would add kernels.
            return torch.autograd.grad(out, (q, k, v), dout)

        try:
            with _fused_sdpa_only(device):
                sec = time_per_call(call, device, cfg)
        except RuntimeError as e:  # no fused kernel for this shape
            log(f"  skip attention {s}: {str(e).splitlines()[0]}")
            continue
        finally:
            del q, k, v, dout
        results.append({"batch": s.batch, "heads": s.heads, "kv_heads": s.kv_heads, "seq": s.seq,
                        "head_dim": s.head_dim, "seconds": sec})
    return results


def measure_copy_bandwidth(device: torch.device, nbytes: int, cfg: TimingConfig) -> float:
    """Device-to-device copy bandwidth, GB/s counting bytes read plus bytes written (far larger than L2)."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    sec = time_per_call(lambda i: dst.copy_(src), device, cfg)
    return 2 * src.numel() * 4 / sec / 1e9


def measure_host_copy(device: torch.device, nbytes: int, cfg: TimingConfig) -> tuple[float, float]:
    """Pinned host-to-device and device-to-host bandwidth, GB/s (what activation/state offload uses)."""
    if not is_cuda(device):
        raise ValueError(f"host copies need a CUDA device, got {device}")
    dev = torch.randint(0, 256, (nbytes,), device=device, dtype=torch.uint8)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    host.copy_(dev)  # random bytes on the host too
    h2d = time_per_call(lambda i: dev.copy_(host, non_blocking=True), device, cfg)
    d2h = time_per_call(lambda i: host.copy_(dev, non_blocking=True), device, cfg)
    return nbytes / h2d / 1e9, nbytes / d2h / 1e9


def host_cores() -> int:
    """CPU cores this process may run on (the container's or cgroup's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure_cpu_adamw(num_params: int, threads: int, *, steps: int = 3, num_tensors: int = 8) -> tuple[float, str]:
    """Parameters per second that ``torch.optim.AdamW(fused=True)`` updates on CPU fp32 state with
    ``threads`` threads (one GPU's share of the host when offloaded state is stepped on the CPU).

    Returns (params/s, implementation used); falls back to foreach if this build lacks the fused CPU kernel.
    """
    if num_params < num_tensors or threads < 1:
        raise ValueError(f"num_params {num_params} and threads {threads} must be at least {num_tensors} and 1")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        per = num_params // num_tensors
        params = [torch.nn.Parameter(torch.randn(per)) for _ in range(num_tensors)]
        for p in params:
            p.grad = torch.randn_like(p)
        impl = "fused"
        try:
            opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
            opt.step()  # first step allocates the moments
        except (RuntimeError, NotImplementedError):
            impl = "foreach"
            opt = torch.optim.AdamW(params, lr=1e-4, foreach=True)
            opt.step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t0)
        return per * num_tensors / statistics.median(times), impl
    finally:
        torch.set_num_threads(old)


def measure_launch_overhead(device: torch.device, *, calls: int = 2000, repeats: int = 5) -> float:
    """Host seconds to launch one tiny eager kernel (an in-place add on one element)."""
    x = torch.randn(1, device=device)
    return host_time_per_call(lambda i: x.add_(1.0), device, calls=calls, repeats=repeats)


def measure_memory(device: torch.device) -> tuple[float, float]:
    """(GiB PyTorch can allocate, GiB used outside its allocator), after every library has initialised.

    Call it last: cuBLAS, cuDNN and NCCL allocate their workspaces and buffers on first use.
    """
    if not is_cuda(device):
        raise ValueError(f"memory measurement needs a CUDA device, got {device}")
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    outside = total - free - torch.cuda.memory_reserved(device)
    return (total - outside) / 2**30, max(outside, 0) / 2**30

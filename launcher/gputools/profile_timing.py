"""How `loadmaster profile` times device work: one timer for every measurement, CUDA or CPU.

Method (the usual GPU micro-benchmark hygiene):
- warm up first (first calls pick cuBLAS/cuDNN algorithms, allocate, raise clocks);
- time a *sample* of ``inner`` back-to-back calls between two CUDA events, so one event pair's resolution
  (~0.5 us) and the host's launch cost do not enter per-call figures;
- before each sample, park the stream on a short ``torch.cuda._sleep`` so the host enqueues the whole sample
  while the GPU waits: the events then measure device time even for kernels shorter than their launch;
- report the median over ``repeats`` samples (robust to a stray clock dip or a neighbour's burst);
- callers pass ``fn(i)`` and rotate between buffers on ``i`` so operands are not served from L2.
On a CPU device the same code times with ``time.perf_counter`` (so tests exercise it without a GPU).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

# torch.cuda._sleep counts SM clock cycles; 2 GHz is at or above the boost clock of current data-centre
# GPUs, so a lower real clock only sleeps longer (never too short to cover the enqueue).
_SLEEP_CYCLES_PER_S = 2.0e9
_MAX_PREFILL_S = 0.02


@dataclass(kw_only=True, slots=True)
class TimingConfig:
    """How long and how often each measurement runs."""

    repeats: int = 7
    """Timed samples per measurement; the median is reported."""
    sample_s: float = 0.004
    """Target device time of one sample; sets how many calls a sample holds."""
    warmup_s: float = 0.02
    """Least time spent warming up each measurement (and at least ``warmup_calls`` calls)."""
    warmup_calls: int = 2
    """Least number of warm-up calls."""
    max_inner: int = 100
    """Most calls per sample: bounds the host enqueue ahead of the GPU (the launch queue holds ~1k kernels)."""


def is_cuda(device: torch.device) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: torch.device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def rotation_count(bytes_per_set: int, cache_bytes: int, *, most: int = 8) -> int:
    """Buffer sets to cycle through so consecutive calls find their operands evicted from a cache.

    Two cache sizes' worth of operands between two uses of a set evicts it under any LRU-like policy.
    """
    if bytes_per_set <= 0:
        raise ValueError(f"bytes_per_set {bytes_per_set} must be positive")
    return max(1, min(most, math.ceil(2 * cache_bytes / bytes_per_set)))


def prefill_stream(seconds: float, stream: torch.cuda.Stream | None = None) -> None:
    """Hold ``stream`` (default: current) on the GPU for ``seconds`` so the host can enqueue ahead."""
    cycles = int(min(seconds, _MAX_PREFILL_S) * _SLEEP_CYCLES_PER_S)
    if cycles > 0:
        with torch.cuda.stream(stream or torch.cuda.current_stream()):
            torch.cuda._sleep(cycles)


def _run_chunk(fn: Callable[[int], object], start: int, count: int, device: torch.device) -> tuple[float, float]:
    """Run ``count`` calls; return (host enqueue seconds per call, completed wall/device seconds per call)."""
    if is_cuda(device):
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ev0.record()
    t0 = time.perf_counter()
    for i in range(start, start + count):
        fn(i)
    host = time.perf_counter() - t0
    if is_cuda(device):
        ev1.record()
        ev1.synchronize()
        dev = ev0.elapsed_time(ev1) / 1e3
    else:
        dev = host
    return host / count, dev / count


def time_per_call(fn: Callable[[int], object], device: torch.device, cfg: TimingConfig, *,
                  inner: int | None = None, warmup_calls: int | None = None, prefill_s: float | None = None,
                  before_sample: Callable[[], None] | None = None) -> float:
    """Median device seconds of one ``fn(i)`` call, following the method in this module's docstring.

    Collectives must issue the same number of calls on every rank: they pass ``inner`` and ``warmup_calls``
    (fixed counts instead of ones derived from local timings), a fixed ``prefill_s`` and a barrier as
    ``before_sample``.
    """
    device = torch.device(device)
    # Warm-up in doubling chunks until both the time and the call count are reached.
    calls, chunk, spent = 0, 1, 0.0
    if warmup_calls is not None:
        host_s, dev_s = _run_chunk(fn, 0, warmup_calls, device)
        calls = warmup_calls
    else:
        while True:
            host_s, dev_s = _run_chunk(fn, calls, chunk, device)
            calls += chunk
            spent += dev_s * chunk
            if calls >= cfg.warmup_calls and spent >= cfg.warmup_s:
                break
            chunk *= 2
    if inner is None:
        inner = max(1, min(cfg.max_inner, math.ceil(cfg.sample_s / max(dev_s, 1e-9))))
    if prefill_s is None:
        # Only needed when the host cannot keep ahead of the GPU; 20 % margin over its enqueue time.
        prefill_s = 1.2 * inner * host_s if host_s > 0.5 * dev_s else 0.0
    samples = []
    for r in range(cfg.repeats):
        if before_sample is not None:
            before_sample()
        base = calls + r * inner
        if is_cuda(device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            prefill_stream(prefill_s)
            start.record()
            for i in range(base, base + inner):
                fn(i)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for i in range(base, base + inner):
                fn(i)
            samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def host_time_per_call(fn: Callable[[int], object], device: torch.device, *, calls: int,
                       repeats: int) -> float:
    """Median host seconds to *issue* one call (no synchronisation inside a sample): eager launch cost."""
    samples = []
    fn(0)
    synchronize(device)
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(calls):
            fn(i)
        samples.append((time.perf_counter() - t0) / calls)
        synchronize(device)
    return statistics.median(samples)

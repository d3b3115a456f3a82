"""Lambdified, vectorised evaluation of the stage cost expressions, and the numeric inputs they take."""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import sympy as sp

from .hardware import HardwareProfile
from .memory import RUNTIME, ArchOptions, memory_terms
from .specs import ModelSpec
from .symbols import H, K, M
from .timing import stage_time_terms

# torchao's default float8 filters (H100 microbenchmarks), on a Linear's (K = in, N = out) features
_FP8_SKIP = {
    "tensorwise": lambda k, n: k <= 4096 and n <= 1024,
    "rowwise": lambda k, n: n <= 2048 or k <= 1024 or (n <= 4096 and k <= 2048),
}


def fp8_eligible(model: ModelSpec, recipe: str = "tensorwise") -> dict[str, int]:
    """Which Linears of a block torchao converts to float8 (1) or leaves in bf16 (0)."""
    h, F, dh = model.hidden_size, model.intermediate_size, int(model.head_dim)
    a, g = model.num_attention_heads, model.kv_heads
    skip = _FP8_SKIP[recipe]
    shapes = {"e_q": (h, a * dh), "e_kv": (h, g * dh), "e_o": (a * dh, h), "e_up": (h, F), "e_down": (F, h)}
    return {k: int(not skip(*kn)) for k, kn in shapes.items()}


def model_inputs(model: ModelSpec, fp8_recipe: str = "tensorwise") -> dict[str, float]:
    return {"h": model.hidden_size, "F": model.intermediate_size, "a": model.num_attention_heads,
            "g": model.kv_heads, "dh": int(model.head_dim), "V": model.vocab_size,
            "gated": int(model.gated_mlp), "row": int(fp8_recipe == "rowwise"), **fp8_eligible(model, fp8_recipe)}


def in_training(p: HardwareProfile, curve: str) -> float:
    """Kernel throughput inside a training step over the profile's isolated measurement of ``curve`` (gemm,
    fp8_gemm, attention): ``constants.in_training``, from a step anatomy (benchmarks/anatomy_fit.py); 1 if
    absent. Isolated back-to-back GEMMs run at a power-limited clock that a step's mix does not hit, and
    torchao's backward float8 GEMMs run without fast accumulation, which the profile's kernel does not."""
    return float(p.constants.get("in_training", {}).get(curve, 1.0))


def hardware_inputs(p: HardwareProfile) -> dict[str, float]:
    c = p.constants
    return {
        "peak": p.bf16_tflops * 1e12, "peak8": p.fp8_tflops * 1e12, "hbm": p.hbm_gbps * 1e9,
        "host": p.host_link_gbps * 1e9, "cpu_adam": p.cpu_adam_params_per_s,
        "ge_max": min(1.0, p.gemm.max_eff * in_training(p, "gemm")), "ge_half": p.gemm.half_x,
        "ge_exp": p.gemm.exponent,
        "f8_max": min(1.0, p.fp8_gemm.max_eff * in_training(p, "fp8_gemm")), "f8_half": p.fp8_gemm.half_x,
        "f8_exp": p.fp8_gemm.exponent,
        "at_max": min(1.0, p.attention.max_eff * in_training(p, "attention")), "at_half": p.attention.half_x,
        "at_exp": p.attention.exponent,
        "slow_comm": p.overlap.comm_compute_slowdown, "comm_eff": p.overlap.comm_efficiency,
        "slow_h2d": p.overlap.h2d_compute_slowdown, "launch": p.kernel_launch_s,
        "hook": float(c.get("fsdp_hook_s", 60e-6)), "ew_eff": float(c.get("elementwise_efficiency", 0.8)),
        "row_slow": float(c.get("fp8_rowwise_gemm_slowdown", 1.0)),
    }


def link_inputs(p: HardwareProfile, gpus_per_node: int, t, d, pp) -> dict[str, np.ndarray]:
    """Bus bandwidth (B/s) and per-step latency of the tp, dp and pp groups for the rank layout (pp, dp, tp),
    tp innermost. A group inside one node uses NVLink; one that spans nodes is held to the network bandwidth
    per GPU (the profile's inter_node, one NIC per GPU), the usual analytical assumption: NCCL can spread a
    ring over several NICs of a node, but measured multi-node bus bandwidth stays far below that sum."""
    t, d, pp = (np.asarray(x, dtype=float) for x in (t, d, pp))
    intra_bw, inter_bw = p.intra_node.bandwidth_gbps * 1e9, p.inter_node.bandwidth_gbps * 1e9
    intra_lat, inter_lat = p.intra_node.latency_s, p.inter_node.latency_s

    def pick(span_over_node):
        return np.where(span_over_node, inter_bw, intra_bw), np.where(span_over_node, inter_lat, intra_lat)
    bw_tp, lat_tp = pick(t > gpus_per_node)
    bw_dp, lat_dp = pick(t * d > gpus_per_node)
    bw_pp, lat_pp = pick((t * d >= gpus_per_node) & (pp > 1))
    return {"bw_tp": bw_tp, "lat_tp": lat_tp, "bw_dp": bw_dp, "lat_dp": lat_dp, "bw_pp": bw_pp, "lat_pp": lat_pp}


def lambdify_modules() -> list:
    """sympy.lambdify's modules for the cost expressions: numpy, with smax/smin as elementwise max/min."""
    return [{"smax": np.maximum, "smin": np.minimum}, "numpy"]


@dataclass
class StageModel:
    """The stage cost expressions (sympy) and their lambdified numpy evaluator."""

    exprs: dict[str, sp.Expr]
    args: list[sp.Symbol]
    fn: object

    def __post_init__(self) -> None:
        self.arg_names = [str(a) for a in self.args]

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        try:
            values = [inputs[a] for a in self.arg_names]
        except KeyError:
            missing = [a for a in self.arg_names if a not in inputs]
            raise TypeError(f"stage model needs inputs {missing}") from None
        return dict(zip(self.exprs, self.fn(*values)))


def _all_symbols() -> list[sp.Symbol]:
    syms = []
    for cls in (M, K, H):
        for v in vars(cls).values():
            if isinstance(v, sp.Symbol):
                syms.append(v)
    return syms


def _cache_dir() -> Path:
    return Path(os.environ.get("LOADMASTER_CACHE", Path.home() / ".cache" / "loadmaster"))


def _source_key(outputs, opts: ArchOptions) -> str:
    """Hash of everything the generated code depends on: the formula sources, options and outputs."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("symbols.py", "memory.py", "timing.py", "stage.py"):
        h.update((here / name).read_bytes())
    h.update(repr((outputs, opts, sp.__version__, np.__version__)).encode())
    return h.hexdigest()[:20]


@functools.lru_cache(maxsize=8)
def stage_model(outputs: tuple[str, ...] | None = None, opts: ArchOptions = RUNTIME) -> StageModel:
    """Build and lambdify the stage expressions once; ``outputs`` picks a subset.

    Lambdify with common-subexpression elimination takes ~0.5 s, so the generated numpy source is kept in
    a cache directory keyed by a hash of the formula files; a changed formula makes a new entry."""
    exprs = {**memory_terms(opts), **stage_time_terms(opts)}
    if outputs is not None:
        exprs = {k: exprs[k] for k in outputs}
    args = _all_symbols()
    path = _cache_dir() / f"stage_{_source_key(outputs, opts)}.py"
    fn = None
    if path.is_file():
        namespace = {"numpy": np, "smax": np.maximum, "smin": np.minimum}
        try:
            exec(compile(path.read_text(), str(path), "exec"), namespace)  # our own generated code
            fn = namespace["_lambdifygenerated"]
        except Exception:  # a torn or stale cache entry: rebuild it
            fn = None
    if fn is None:
        fn = sp.lambdify(args, list(exprs.values()), modules=lambdify_modules(), cse=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(inspect.getsource(fn))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home only costs the rebuild next time
    return StageModel(exprs=exprs, args=args, fn=fn)


def broadcast(outputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Give every output the candidate dimension (constant expressions come back as scalars)."""
    return {k: np.broadcast_to(np.asarray(v, dtype=float), (n,)) for k, v in outputs.items()}


def names(outputs: Iterable[str]) -> tuple[str, ...]:
    return tuple(outputs)


def knob_inputs(*, b, s, t, d, pp, zero, sequence_parallel, selective, l, r, oa, os, f, compile, m, M, first,
                last, nV, reduce_every=0) -> dict[str, np.ndarray]:
    """Plan knobs (scalars or arrays over candidates) as the 0/1 flags and divisors the formulas take.

    zero 0 replicates (DDP-like all-reduce); 1 and 2 shard fp32 state and gradients and keep bf16 params
    unsharded from forward to backward; 3 also reshards after forward. Pipelined stages keep the bf16 params
    and fp32 gradient accumulators across micro-batches (torch.distributed.pipelining turns resharding and
    gradient sync off until the last backward); so does gradient accumulation without pipelining unless
    ``reduce_every`` (grad_reduce: every) reduce-scatters after each micro-batch.
    """
    arr = lambda x: np.asarray(x, dtype=float)  # noqa: E731
    t, d, pp, zero, M, m = arr(t), arr(d), arr(pp), arr(zero), arr(M), arr(m)
    nosync = (((M > 1) & ~arr(reduce_every).astype(bool)) | (pp > 1)).astype(float)
    return {
        "b": arr(b), "s": arr(s), "t": t, "d": d, "pp": pp,
        "sp": ((t > 1) & arr(sequence_parallel).astype(bool)).astype(float),
        "ds": np.where(zero >= 1, d, 1.0), "z3": (zero >= 3).astype(float), "z0": (zero == 0).astype(float),
        "keep": (pp > 1).astype(float), "nosync": nosync, "acc": (M > m).astype(float),
        "l": arr(l), "r": arr(r), "sel": arr(selective), "oa": arr(oa), "os": arr(os), "f": arr(f),
        "k": arr(compile), "m": m, "M": M, "first": arr(first), "last": arr(last), "nV": arr(nV),
    }

"""The named constants the cost formulas stand on, and where each is stated: every one is data with a source.

Three kinds, two homes:
- **hardware constants** (of a GPU, its host and its links) are stated in each hardware profile's
  ``constants:`` block (profiles/*.yaml);
- **runtime constants** (of loadmaster's trainer: kernels a block launches, bytes its memory-bound ops move)
  are the same on every GPU and stated once, in profiles/runtime/loadmaster.yaml;
- **quality constants** (what a technique does to the loss, as loadmaster measured it: the float8 share
  ``--fp8-budget auto`` allows) are stated in the same runtime file, under ``quality:``.

Each entry is ``name: {value: X, source: "..."}`` where the source says how the number was obtained (measured:
date, GPU, command; datasheet; derived: from what; assumed: why). A file that misses a constant, adds an unknown
one or gives one without a source is a load error naming the key: nothing falls back to a value in the code.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError, read_yaml, require, short
from .specs import PROFILES


@dataclass(frozen=True)
class ConstantDef:
    """What a named constant means and the range a file may give it."""

    doc: str
    """One line: what it measures, in which unit."""
    lo: float
    """Smallest legal value."""
    hi: float
    """Largest legal value."""


@dataclass(kw_only=True, frozen=True)
class Constant:
    """One stated constant: its value and where it comes from."""

    value: float
    """The number the formulas use."""
    source: str
    """How it was obtained (measured / datasheet / derived / assumed, with the details)."""


HARDWARE: dict[str, ConstantDef] = {
    "kernel_launch_s": ConstantDef("host seconds per launched eager kernel (bounds small blocks)", 0.0, 1e-3),
    "fsdp_hook_s": ConstantDef("host seconds of FSDP2's pre/post hooks per block per pass", 0.0, 1e-2),
    "elementwise_efficiency": ConstantDef("memory-bound kernels' share of the device-copy bandwidth (0-1]",
                                          1e-3, 1.0),
    "fp8_rowwise_gemm_slowdown": ConstantDef("rowwise / tensorwise float8 GEMM time", 0.5, 4.0),
    "in_training_gemm": ConstantDef("bf16 GEMM throughput inside a training step / the isolated curve", 0.2, 2.0),
    "in_training_fp8_gemm": ConstantDef("float8 GEMM throughput inside a step / the isolated curve", 0.2, 2.0),
    "in_training_attention": ConstantDef("SDPA throughput inside a step / the isolated curve", 0.2, 2.0),
    "comm_compute_slowdown": ConstantDef("fractional slowdown of compute while a collective runs beside it",
                                         0.0, 1.0),
    "comm_efficiency": ConstantDef("share of a link's bandwidth a collective reaches beside compute", 1e-3, 1.0),
    "h2d_compute_slowdown": ConstantDef("fractional slowdown of compute while a host copy runs beside it", 0.0, 1.0),
    "context_gib": ConstantDef("device memory outside PyTorch's allocator (CUDA context, NCCL, cuBLAS), GiB",
                               0.0, 64.0),
    "fragmentation": ConstantDef("caching allocator's reserved / allocated - 1 at the peak", 0.0, 1.0),
    "host_memory_usable_fraction": ConstantDef("share of a node's CPU memory offloaded state may take", 0.05, 1.0),
    "grouped_gemm_efficiency": ConstantDef("grouped (MoE expert) GEMM throughput over a dense GEMM of one expert's "
                                           "FLOPs", 0.05, 1.5),
}

RUNTIME: dict[str, ConstantDef] = {
    "kernels_per_block_eager": ConstantDef("kernels an eager block launches in forward besides RoPE, its norms "
                                           "and SwiGLU (counted per kernel choice)", 1, 1000),
    "kernels_per_block_compiled": ConstantDef("kernels a torch.compile'd block launches in forward", 1, 1000),
    "kernels_per_block_tp_extra": ConstantDef("extra forward kernels of a tensor-parallel block", 0, 1000),
    "norm_residual_bytes_eager": ConstantDef("HBM bytes per hidden element of a block's norms and residual "
                                             "adds, eager", 0, 1000),
    "norm_residual_bytes_compiled": ConstantDef("the same, compiled (fused)", 0, 1000),
    "norm_residual_bytes_liger": ConstantDef("the same, eager with liger-kernel's RMSNorm", 0, 1000),
    "norm_kernels_eager": ConstantDef("forward kernels of one block's two RMSNorms, PyTorch's", 0, 100),
    "norm_kernels_liger": ConstantDef("the same, liger-kernel's", 0, 100),
    "rope_bytes_eager": ConstantDef("forward-equivalent HBM bytes per q/k element of the sequence-major eager RoPE",
                                    0, 1000),
    "rope_bytes_eager_transposed": ConstantDef("the same, the first RoPE on transposed q/k", 0, 1000),
    "rope_bytes_liger": ConstantDef("the same, liger-kernel's fused RoPE", 0, 1000),
    "rope_kernels_eager": ConstantDef("forward kernels of one block's RoPE, sequence-major eager", 0, 100),
    "rope_kernels_eager_transposed": ConstantDef("the same, the first RoPE on transposed q/k", 0, 100),
    "rope_kernels_liger": ConstantDef("the same, liger-kernel's", 0, 100),
    "rope_bytes_compiled": ConstantDef("HBM bytes per q/k element of RoPE, compiled", 0, 1000),
    "mlp_act_bytes_eager": ConstantDef("HBM bytes per MLP-width element of the activation, eager, plain MLP",
                                       0, 1000),
    "mlp_act_bytes_compiled": ConstantDef("the same, compiled", 0, 1000),
    "mlp_gate_bytes_eager": ConstantDef("extra bytes per MLP-width element of a gated (SwiGLU) activation, eager",
                                        0, 1000),
    "mlp_gate_bytes_compiled": ConstantDef("the same, compiled", 0, 1000),
    "mlp_gate_bytes_liger": ConstantDef("the same, eager with liger-kernel's fused SiLU-multiply", 0, 1000),
    "swiglu_kernels_eager": ConstantDef("forward kernels of one block's MLP activation, PyTorch's", 0, 100),
    "swiglu_kernels_liger": ConstantDef("the same, liger-kernel's", 0, 100),
    "mlp_gate_saved_tensors_eager": ConstantDef("MLP-wide bf16 tensors a gated MLP saves beyond its gate input and "
                                                "the down projection's input, PyTorch's SwiGLU", 0, 10),
    "mlp_gate_saved_tensors_liger": ConstantDef("the same, liger-kernel's SwiGLU", 0, 10),
    "loss_forward_bytes_per_logit": ConstantDef("live bytes per logit in the loss's forward (bf16 logits, fp32 "
                                                "copy, log-softmax)", 0, 1000),
    "loss_backward_bytes_per_logit": ConstantDef("live bytes per logit in the loss's backward", 0, 1000),
    "loss_traffic_bytes_per_logit": ConstantDef("HBM bytes per logit the loss's memory-bound kernels move "
                                                "(forward + backward)", 0, 1000),
    "loss_retained_bytes_per_logit": ConstantDef("bytes per logit the eager loss keeps from forward to backward",
                                                 0, 100),
    "loss_forward_bytes_per_logit_compiled": ConstantDef("live bytes per logit in the compiled loss's forward",
                                                         0, 1000),
    "loss_backward_bytes_per_logit_compiled": ConstantDef("the same, its backward", 0, 1000),
    "loss_traffic_bytes_per_logit_compiled": ConstantDef("HBM bytes per logit of the compiled loss (forward + "
                                                         "backward)", 0, 1000),
    "loss_retained_bytes_per_logit_compiled": ConstantDef("bytes per logit the compiled loss keeps for backward",
                                                          0, 100),
    "loss_forward_bytes_per_logit_liger_fused": ConstantDef("live bytes per logit in the fused linear "
                                                            "cross-entropy's forward (full logits)", 0, 1000),
    "loss_backward_bytes_per_logit_liger_fused": ConstantDef("the same, its backward", 0, 1000),
    "loss_traffic_bytes_per_logit_liger_fused": ConstantDef("HBM bytes per logit of its cross-entropy kernel", 0, 1000),
    "loss_retained_bytes_per_logit_liger_fused": ConstantDef("bytes per logit it keeps for backward", 0, 100),
    "flce_chunk_bytes_per_logit": ConstantDef("bytes per logit of one chunk's logits buffer (fused linear "
                                              "cross-entropy)", 0, 100),
    "flce_token_bytes": ConstantDef("bytes per token x hidden the fused linear cross-entropy keeps (input "
                                    "gradient)", 0, 100),
    "flce_vocab_forward_bytes": ConstantDef("bytes per vocab x hidden element live in its forward (weight "
                                            "gradient accumulators)", 0, 100),
    "flce_vocab_backward_bytes": ConstantDef("the same, kept for backward", 0, 100),
    "flce_accumulate_bytes": ConstantDef("HBM bytes per vocab x hidden element per chunk of the weight-gradient "
                                         "accumulation", 0, 100),
    "fp8_cast_bytes_eager": ConstantDef("HBM bytes per element of torchao's two dynamic casts, eager", 0, 1000),
    "fp8_cast_bytes_compiled": ConstantDef("the same, compiled (amax fused into the producer)", 0, 1000),
    "tp_selective_redo_share": ConstantDef("share of a block pass's TP collectives selective recompute redoes",
                                           0.0, 1.0),
    "optimizer_bytes_per_param": ConstantDef("HBM bytes per local fp32 parameter of fused AdamW + clipping",
                                             0, 1000),
    "optimizer_foreach_bytes_per_param": ConstantDef("HBM bytes per local fp32 parameter of foreach AdamW + "
                                                     "clipping (each foreach op a pass of its own)", 0, 1000),
    "optimizer_foreach_temp_bytes_per_param": ConstantDef("bytes per local fp32 parameter foreach AdamW allocates "
                                                          "during the step", 0, 100),
    "optimizer_kernels_per_block": ConstantDef("optimizer-step kernels per block", 0, 1000),
    "optimizer_kernels_fixed": ConstantDef("optimizer-step kernels per stage besides the blocks'", 0, 1000),
    "fp8_probe_bytes_per_param": ConstantDef("HBM bytes per local float8 weight element of one loss-sensitivity "
                                             "probe (quantisation error · gradient)", 0, 1000),
    "expert_load_imbalance": ConstantDef("routed tokens on the busiest expert-parallel rank over the mean (plan "
                                         "key moe_imbalance's default)", 1.0, 64.0),
    "moe_router_bytes_per_score_eager": ConstantDef("HBM bytes per (token, expert) score of the router's "
                                                    "memory-bound forward ops, eager", 0, 1000),
    "moe_router_bytes_per_score_compiled": ConstantDef("the same, compiled", 0, 1000),
    "moe_permute_bytes_eager": ConstantDef("HBM bytes per routed-copy element (token x top-k x hidden) of the "
                                           "dispatch gather, score multiply and combine, forward, eager", 0, 1000),
    "moe_permute_bytes_compiled": ConstantDef("the same, compiled", 0, 1000),
    "moe_kernels_per_block_eager": ConstantDef("extra forward kernels of a MoE block over a dense one, eager", 0, 1000),
    "moe_kernels_per_block_compiled": ConstantDef("the same, compiled", 0, 1000),
    "moe_index_bytes_per_copy": ConstantDef("bytes a MoE block saves per routed copy besides activations: sort, "
                                            "gather and combine indices and the top-k weights", 0, 1000),
    "moe_pad_rows_per_expert": ConstantDef("rows each local expert's group is padded by at most (grouped GEMM "
                                           "alignment); the trainer allocates the bound", 0, 1024),
    "moe_sync_exposed_kernels": ConstantDef("kernel launches whose latency a MoE block's host sync exposes (ep > 1)",
                                            0, 1000),
    "cp_forward_bytes_per_q_element": ConstantDef("HBM bytes per local attention-output element of one context-"
                                                  "parallel ring step's fp32 merge, forward", 0, 1000),
    "cp_forward_bytes_per_kv_element": ConstantDef("HBM bytes per local K/V element of one ring step, forward",
                                                   0, 1000),
    "cp_backward_bytes_per_q_element": ConstantDef("HBM bytes per local query element of one ring step's fp32 "
                                                   "gradient accumulation, backward", 0, 1000),
    "cp_backward_bytes_per_kv_element": ConstantDef("HBM bytes per local K/V element of one ring step's fp32 "
                                                    "gradient accumulation and send buffer, backward", 0, 1000),
}

QUALITY: dict[str, ConstantDef] = {
    "fp8_auto_budget": ConstantDef("share of block-steps in float8 that `--fp8-budget auto` allows", 0.0, 1.0),
}


def parse_constants(data: object, source: str | Path, defs: dict[str, ConstantDef],
                    key: str = "constants") -> dict[str, Constant]:
    """Read a ``constants:`` mapping: every defined name present, with a finite value in range and a source."""
    import difflib
    require(isinstance(data, dict), source, key, f"is {short(data)}", "give a mapping name: {value: X, source: '...'}")
    out = {}
    for name, entry in data.items():
        if name not in defs:
            close = difflib.get_close_matches(str(name), list(defs), n=1)
            raise SpecError(source, f"{key}.{name}", "unknown constant",
                            f"did you mean `{close[0]}`?" if close else f"known: {', '.join(defs)}")
        where = f"{key}.{name}"
        require(isinstance(entry, dict) and set(entry) == {"value", "source"}, source, where,
                f"is {short(entry)}", "write {value: X, source: 'measured/datasheet/derived/assumed: ...'}")
        value, src = entry["value"], entry["source"]
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                source, where, f"value {short(value)} is not a number", "give a finite number")
        d = defs[name]
        require(d.lo <= value <= d.hi, source, where, f"value {value} is outside [{d.lo}, {d.hi}]",
                f"it is {d.doc}")
        require(isinstance(src, str) and len(src.strip()) >= 8, source, where, f"source {short(src)} says nothing",
                "say how the number was obtained")
        out[name] = Constant(value=float(value), source=src.strip())
    missing = [n for n in defs if n not in out]
    require(not missing, source, f"{key}.{missing[0] if missing else ''}", "missing",
            f"state every constant with its source (missing: {', '.join(missing)})")
    return out


RUNTIME_FILE = PROFILES / "runtime" / "loadmaster.yaml"


@functools.lru_cache(maxsize=4)
def _runtime_cached(path: str, mtime: float) -> dict[str, Constant]:
    data = read_yaml(path)
    require(set(data) == {"name", "source", "constants", "quality"}, path, "<file>", f"has keys {sorted(data)}",
            "a runtime file has name, source, constants and quality")
    return {**parse_constants(data["constants"], path, RUNTIME),
            **parse_constants(data["quality"], path, QUALITY, key="quality")}


def runtime_constants(path: str | Path = RUNTIME_FILE) -> dict[str, Constant]:
    """The runtime constants of loadmaster's trainer (profiles/runtime/loadmaster.yaml, ``constants:``)."""
    p = Path(path)
    return {k: v for k, v in _runtime_cached(str(p), p.stat().st_mtime).items() if k in RUNTIME}


def quality_constants(path: str | Path = RUNTIME_FILE) -> dict[str, Constant]:
    """The quality constants (profiles/runtime/loadmaster.yaml, ``quality:``)."""
    p = Path(path)
    return {k: v for k, v in _runtime_cached(str(p), p.stat().st_mtime).items() if k in QUALITY}

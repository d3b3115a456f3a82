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
from .comm import group_time_s
from .constants import runtime_constants
from .fp8 import fp8_eligible
from .kernels import kernel_inputs
from .symbols import RUNTIME_SYMBOLS, H, K, M, R
from .timing import stage_time_terms

def model_inputs(model: ModelSpec, fp8_recipe: str = "tensorwise") -> dict[str, float]:
    return {"h": model.hidden_size, "F": model.intermediate_size, "a": model.num_attention_heads,
            "g": model.kv_heads, "dh": int(model.head_dim), "V": model.vocab_size,
            "gated": int(model.gated_mlp), "row": int(fp8_recipe == "rowwise"), "rf": model.rope_share,
            **fp8_eligible(model, fp8_recipe),
            "E": model.num_experts, "topk": model.num_experts_per_tok, "Fe": model.expert_width if model.is_moe else 0,
            "Fs": model.shared_width}


def hardware_inputs(p: HardwareProfile) -> dict[str, float]:
    """The profile's numbers (and the trainer's runtime constants) as the formulas' hardware inputs.

    The GEMM, float8 GEMM and attention curves are scaled by the profile's ``in_training_*`` ratios: kernel
    throughput inside a training step over the isolated measurement (benchmarks/anatomy_fit.py). Isolated
    back-to-back GEMMs run at a power-limited clock that a step's mix does not hit, and torchao's backward float8
    GEMMs run without fast accumulation, which the profile's kernel does not. The inputs of the kernel choices are
    those of the Plan's defaults (costmodel.kernels); ``prediction.stage_inputs`` overrides them with the plan's."""
    c = p.const
    rt = {str(RUNTIME_SYMBOLS[k]): v.value for k, v in runtime_constants().items() if k in RUNTIME_SYMBOLS}
    rt.update({k: v for k, v in kernel_inputs({}).items() if k not in ("fl", "nch")})
    return {
        "peak": p.bf16_tflops * 1e12, "peak8": p.fp8_tflops * 1e12, "hbm": p.hbm_gbps * 1e9,
        "host": p.host_link_gbps * 1e9, "cpu_adam": p.cpu_adam_params_per_s,
        "ge_max": min(1.0, p.gemm.max_eff * c("in_training_gemm")), "ge_half": p.gemm.half_x,
        "ge_exp": p.gemm.exponent,
        "f8_max": min(1.0, p.fp8_gemm.max_eff * c("in_training_fp8_gemm")), "f8_half": p.fp8_gemm.half_x,
        "f8_exp": p.fp8_gemm.exponent,
        "at_max": min(1.0, p.attention.max_eff * c("in_training_attention")), "at_half": p.attention.half_x,
        "at_exp": p.attention.exponent,
        "slow_comm": c("comm_compute_slowdown"), "comm_eff": c("comm_efficiency"),
        "slow_h2d": c("h2d_compute_slowdown"), "launch": c("kernel_launch_s"),
        "hook": c("fsdp_hook_s"), "ew_eff": c("elementwise_efficiency"),
        "row_slow": c("fp8_rowwise_gemm_slowdown"), "gg_eff": c("grouped_gemm_efficiency"), **rt,
    }


COMM_SYMBOLS = ("bw_tp", "bw_tp_rs", "bw_ag", "bw_rs", "bw_rag", "bw_rrs", "bw_pp", "t_tiny", "bw_a2a", "bw_eag",
                "bw_ers", "t_a2a_tiny", "bw_cp", "bw_cp_p2p")


def _factorize(values: np.ndarray, passes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, index of each value among them), as np.unique(return_inverse=True) gives in some order:
    a stage table holds few distinct (group, stride, op) combinations, and a compare per distinct value beats a
    sort of every row (the tuner's hot path); more than ``passes`` of them fall back to the sort."""
    inverse = np.full(values.shape, -1, dtype=np.int64)
    uniq: list = []
    todo = np.ones(values.shape, dtype=bool)
    while todo.any():
        if len(uniq) == passes:
            return np.unique(values, return_inverse=True)
        v = values[int(np.argmax(todo))]
        hit = values == v
        inverse[hit] = len(uniq)
        uniq.append(v)
        todo &= ~hit
    return np.asarray(uniq), inverse


def comm_inputs(p: HardwareProfile, gpus_per_node: int, knobs: dict, msgs: dict) -> dict[str, np.ndarray]:
    """The effective bus bandwidth (B/s) of every collective of a stage, looked up on the profile's measured
    curves (costmodel.comm) at that collective's own size and group, for the rank layout (pp, dp, cp, tp), tp
    innermost (launcher.runtime.parallel.mesh): a TP group is the t consecutive ranks, a CP group the c ranks t
    apart, the FSDP group (dp × cp) the d·c ranks t apart, pipeline neighbours t·d·c apart. Expert parallelism
    folds dp into (dp / e, cp, e): an EP group is e ranks t apart, a CP group then c ranks t·e apart, and the ranks
    holding the same experts d·c / e ranks t·e apart. A group spanning nodes has min(n, GPUs per node / stride)
    members on each of its nodes."""
    t, d, pp, e, c = (np.asarray(knobs[k], dtype=float) for k in ("t", "d", "pp", "e", "c"))
    sp_on, z0 = np.asarray(knobs["sp"], dtype=float), np.asarray(knobs["z0"], dtype=float)
    n = max(np.size(x) for x in (t, d, pp, e, c, sp_on, z0, *msgs.values()))
    t, d, pp, e, c, sp_on, z0 = (np.broadcast_to(x, (n,)) for x in (t, d, pp, e, c, sp_on, z0))
    G = gpus_per_node
    out = {k: np.ones(n) for k in COMM_SYMBOLS}
    out["t_tiny"] = np.zeros(n)
    out["t_a2a_tiny"] = np.zeros(n)

    OPS = ("all_gather", "reduce_scatter", "all_reduce", "all_to_all")

    def each(group, stride, nbytes, op, key, p2p=False):
        """Fill ``out[key]`` with factor·(n-1)/n·size / time (the form timing.coll_s divides by)."""
        size = np.maximum(np.broadcast_to(np.asarray(nbytes, dtype=float), (n,)), 1.0)   # 0 bytes: any bw
        code = np.asarray(OPS.index(op) if isinstance(op, str) else op, dtype=np.int64)
        combo = (np.asarray(group, dtype=np.int64) * 2**24 + np.asarray(stride, dtype=np.int64)) * 4 + code
        if combo.size == 1 or combo.min() == combo.max():    # one layout (the tuner's case): no sort
            uniq, inverse = combo.reshape(-1)[:1], np.zeros(n, dtype=np.int64)
        else:
            uniq, inverse = _factorize(np.broadcast_to(combo, (n,)))
        for u, k in enumerate(uniq.tolist()):
            g, st, o = k // 4 // 2**24, k // 4 % 2**24, OPS[k % 4]
            if g <= 1:
                continue
            idx = inverse.reshape(-1) == u if len(uniq) > 1 else slice(None)
            members = max(1, min(g, G // st)) if st < G else 1
            nodes = max(1, -(-g // members))
            if p2p:   # a send of s bytes takes what a 2-rank all-gather of 2s does (costmodel.comm)
                secs = group_time_s(p.intra_node, p.inter_node, "all_gather", 2, 1 if nodes > 1 else 2, nodes,
                                    2 * size[idx])
                out[key][idx] = size[idx] / np.maximum(secs, 1e-12)
                continue
            secs = group_time_s(p.intra_node, p.inter_node, o, g, members, nodes, size[idx])
            f = (2.0 if o == "all_reduce" else 1.0) * (g - 1) / g
            out[key][idx] = f * size[idx] / np.maximum(secs, 1e-12)
            if key == "bw_ag":   # the gradient norm's all-reduce of one number over the same group
                out["t_tiny"][idx] = group_time_s(p.intra_node, p.inter_node, "all_reduce", g, members, nodes,
                                                  np.full(n, 8.0)[idx])
            if key == "bw_a2a":  # the token counts sent before each dispatch (latency-bound)
                out["t_a2a_tiny"][idx] = group_time_s(p.intra_node, p.inter_node, "all_to_all", g, members, nodes,
                                                      np.full(n, 8.0 * g)[idx])
    ar = OPS.index("all_reduce")
    each(t, 1.0, msgs["msg_tp"], np.where(sp_on > 0, OPS.index("all_gather"), ar), "bw_tp")
    each(t, 1.0, msgs["msg_tp"], np.where(sp_on > 0, OPS.index("reduce_scatter"), ar), "bw_tp_rs")
    grad_op = np.where(z0 > 0, ar, OPS.index("reduce_scatter"))
    each(d * c, t, msgs["msg_ag"], "all_gather", "bw_ag")
    each(d * c, t, msgs["msg_rs"], grad_op, "bw_rs")
    each(d * c, t, msgs["msg_root_ag"], "all_gather", "bw_rag")
    each(d * c, t, msgs["msg_root_rs"], grad_op, "bw_rrs")
    each(np.where(pp > 1, 2.0, 1.0), t * d * c, msgs["msg_pp"], "all_gather", "bw_pp", p2p=True)
    each(e, t, msgs["msg_a2a"], "all_to_all", "bw_a2a")
    each(d * c / e, t * e, msgs["msg_eag"], "all_gather", "bw_eag")
    each(d * c / e, t * e, msgs["msg_ers"], grad_op, "bw_ers")
    # context parallel: all-gather of a block's K/V (the gathered size) and the ring's send to the next cp rank,
    # which crosses a node boundary when the cp group does
    each(c, t * e, c * np.asarray(msgs["msg_cp"], dtype=float), "all_gather", "bw_cp")
    each(c, t * e, msgs["msg_cp"], "all_gather", "bw_cp_p2p", p2p=True)
    return out


MESSAGES = ("msg_tp", "msg_ag", "msg_rs", "msg_root_ag", "msg_root_rs", "msg_pp", "msg_eag", "msg_ers", "msg_a2a",
            "msg_cp")


def evaluate(outputs: tuple[str, ...] | None, inputs: dict, prof: HardwareProfile, gpus_per_node: int,
             opts: ArchOptions = RUNTIME, comm: bool = True) -> dict[str, np.ndarray]:
    """The stage model at ``inputs`` (model, hardware and knob inputs): first the size of every collective, then
    their bandwidth on the profile's curves at those sizes, then ``outputs`` (None: every term). ``comm=False``
    prices every collective at zero time (what a rank computes alone: `loadmaster rehearse` measures that)."""
    free = {k: (0.0 if k.startswith("t_") else 1e30) for k in COMM_SYMBOLS}   # times nothing, bandwidths endless
    if not comm:
        return stage_model(outputs, opts)(**inputs, **free)
    msgs = stage_model(MESSAGES, opts)(**inputs, **free)
    return stage_model(outputs, opts)(**inputs, **comm_inputs(prof, gpus_per_node, inputs, msgs))


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


def all_symbols() -> list[sp.Symbol]:
    """Every symbol of the cost formulas, in the order the lambdified evaluator takes them."""
    syms = []
    for cls in (M, K, H, R):
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
    args = all_symbols()
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
                last, nV, reduce_every=0, vocab_parallel=1, foreach=0, pp_reshard=0, lm=0, ep=1,
                imbalance=0, fused_loss=0, loss_chunks=1, cp=1, cp_allgather=1) -> dict[str, np.ndarray]:
    """Plan knobs (scalars or arrays over candidates) as the 0/1 flags and divisors the formulas take.

    zero 0 replicates (DDP-like all-reduce); 1 and 2 shard fp32 state and gradients and keep bf16 params
    unsharded from forward to backward; 3 also reshards after forward. Pipelined stages keep the bf16 params
    and fp32 gradient accumulators across micro-batches (torch.distributed.pipelining turns resharding and
    gradient sync off until the last backward); so does gradient accumulation without pipelining unless
    ``reduce_every`` (grad_reduce: every) reduce-scatters after each micro-batch, and a pipeline under zero 3
    re-shards after each forward when ``pp_reshard`` (pp_reshard_after_forward). ``lm`` of the ``l`` blocks are
    mixture-of-experts blocks, their experts spread over ``ep`` ranks; ``imbalance`` is the plan's moe_imbalance
    (0: the runtime default). ``fused_loss`` and ``loss_chunks``: the fused linear cross-entropy and its token
    chunks (costmodel.kernels.kernel_inputs gives both for a plan's loss_impl). ``cp`` ranks share each sequence
    (FSDP shards the fp32 state over dp × cp, the experts' over dp × cp / ep); ``cp_allgather`` (cp_rotate:
    allgather) or a ring brings them K/V.
    """
    arr = lambda x: np.asarray(x, dtype=float)  # noqa: E731
    t, d, pp, zero, M, m, c = arr(t), arr(d), arr(pp), arr(zero), arr(M), arr(m), arr(cp)
    nosync = (((M > 1) & ~arr(reduce_every).astype(bool)) | (pp > 1)).astype(float)
    return {
        "b": arr(b), "s": arr(s), "t": t, "d": d, "pp": pp, "c": c, "cag": arr(cp_allgather),
        "sp": ((t > 1) & arr(sequence_parallel).astype(bool)).astype(float),
        "ds": np.where(zero >= 1, d * c, 1.0), "z3": (zero >= 3).astype(float), "z0": (zero == 0).astype(float),
        "keep": ((pp > 1) & ~((zero >= 3) & arr(pp_reshard).astype(bool))).astype(float), "nosync": nosync,
        "acc": (M > m).astype(float), "fe": arr(foreach),
        "l": arr(l), "r": arr(r), "sel": arr(selective), "oa": arr(oa), "os": arr(os), "f": arr(f),
        "k": arr(compile), "m": m, "M": M, "first": arr(first), "last": arr(last), "nV": arr(nV),
        "vp": arr(vocab_parallel), "fl": arr(fused_loss), "nch": arr(loss_chunks),
        "lm": arr(lm), "e": arr(ep), "dse": np.where(zero >= 1, d * c / arr(ep), 1.0), "imb": arr(imbalance),
    }

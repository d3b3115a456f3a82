"""Exact per-stage tables: every block count of every per-stage knob, costed in vectorised calls of the cost model.

A *rank* of a pipeline (or the only rank without one) holds ``n`` blocks, split into ``v`` chunks under
Interleaved1F1B. Its per-stage knobs are block counts: ``r`` checkpointed, ``oa`` activation-offloaded, ``os``
state-offloaded and ``f`` float8 blocks. How each takes every integer value:

- ``r`` (0..n) and ``os`` (0..n): enumerated, every pair, as rows of one lambdified call of the cost model
  (costmodel.stage.stage_model) per role and batch of block counts, all cases (planner.knobs) together.
- ``oa``: the least count that fits, per row and per number of micro-batches in flight. An offloaded block adds
  the same time (its copies over the host link) and moves the same bytes from the GPU to the host, and changes
  nothing else, so of two counts that fit the smaller is never worse. Its per-block time, GPU bytes and host
  bytes are read off the cost model (the difference of two evaluations, 0 and 1 blocks, per case).
- ``f``: 0 or the most the user allows (``max_fp8_fraction`` × blocks). A float8 block changes a block's forward,
  backward and recomputed GEMM and cast time by the same sign (the cost model's per-block float8 terms), the time
  of a rank never falls as its compute grows (overlapped communication hides at most what compute adds), and
  its memory takes one float8 weight copy whatever the count: so between 1 and the most, the fewest is best
  when float8 is slower and the most when it is faster, and 1 is never better than 0 in the first case.
  tests/test_planner.py checks this against every count by brute force.

Why enumeration and not integer variables in the MILP: the cost is not linear in the counts (the host-bound
``max`` of a block's compute, the exposed part of each overlapped collective, which depends on the average
compute per block and hence on ``r`` and ``f`` together, the CPU/GPU optimizer ``max``); a MILP would need
those pieces restated in the planner with extra binaries, and would then be exact only as far as that restatement
is. Enumerating (r, os) costs (n + 1)² rows of ~0.4 µs each per case and block count, measured: 2,200 rows for
Llama-3-8B on one GPU, per case, in ~1 ms.

Chunks of an interleaved rank: its blocks and each count are spread as evenly as possible over its chunks, in
order (chunk j of ``x`` gets ``x // v + (j < x % v)``); offloaded-activation blocks follow the checkpointed ones.
The tuner's interleaved space is these spreads (planner.knobs).

Not every row is costed: the rows on the two axes (the least r, or no state offload) are; memory of the rows
between is rebuilt from them (checkpointing and state offload change separate memory terms, ``_between``), their
time has a floor (``max(T(r, 0), T(r0, os))``: time never falls with either count), and only those that fit and
whose floor can still win are costed. The rebuilding is checked against the cost model on the rows costed; a
mismatch turns it off (everything is then costed).

For a pipeline each rank's candidates are reduced, per block count, to those no other candidate beats in both
``T`` (time per micro-batch) and ``T + D`` (``D``: the once-per-step extra): in the step time
``a·max T + b·ΣT + max_i(D_i − Σ_{j<i} T_j)`` with b = 1 (1F1B, GPipe), a rank's ``T`` lower by ε lowers ``ΣT`` by
ε and raises the last term by at most ε, and with ``T + D`` not higher its own term does not rise — so such a
candidate is never worse. Under Interleaved1F1B (b = 1/v) a faster rank can hide less of a later rank's extra than
it saves: the last rank keeps candidates no other beats in ``T`` and ``b·T + D``, the others one candidate per
distinct ``T`` (the least ``D``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from costmodel.hardware import HardwareProfile
from costmodel.kernels import kernel_inputs
from costmodel.memory import IN_STEP_PHASES
from costmodel.pipeline import in_flight
from costmodel.plan import KERNEL_KEYS, vocab_matrices
from costmodel.prediction import plan_wide_knobs
from costmodel.specs import ClusterSpec, ModelSpec
from costmodel.stage import evaluate, hardware_inputs, knob_inputs, model_inputs

from .knobs import fp8_allowed
from .space import Layout, Schedule, SearchSpace, moe_layers_of_role, uniform_blocks

OUTPUTS = ("t_mb", "delta", *IN_STEP_PHASES, "peak_optimizer", "act_per_microbatch", "accumulator_bytes",
           "host_state", "host_act_per_microbatch")
MEMORY = (*IN_STEP_PHASES, "peak_optimizer", "act_per_microbatch", "accumulator_bytes", "host_state",
          "host_act_per_microbatch")
"""The memory outputs: checkpointed and state-offloaded blocks change separate terms of each (planner.stages)."""
STAGE_SET = ("l", "r", "oa", "os", "f", "m", "acc", "lm")
"""Cost-model inputs the tables set per row; every other input comes from costmodel.prediction.stage_inputs."""
FIT_MARGIN = 1e-9
"""Relative headroom kept below the memory limits, so floating-point summation order never lets a plan through
that predict would refuse."""


_EVEN: dict[int, np.ndarray] = {}


def even(x, v: int) -> np.ndarray:
    """``x`` (array) spread over ``v`` chunks in order: shape (len(x), v)."""
    x = np.asarray(x, dtype=np.int64)
    if v == 1:
        return x[:, None]
    top = int(x.max()) + 1 if len(x) else 1
    table = _EVEN.get(v)
    if table is None or len(table) < top:
        xs = np.arange(max(top, 512))[:, None]
        table = _EVEN[v] = xs // v + (np.arange(v)[None, :] < xs % v)
    return table[x]


def rank_sum(x: np.ndarray) -> np.ndarray:
    """(rows, v) → (rows,): a rank's total over its chunks."""
    return x[:, 0] if x.shape[1] == 1 else x.sum(axis=1)


def roles(pp: int) -> list[str]:
    return ["only"] if pp == 1 else ["first"] + (["middle"] if pp > 2 else []) + ["last"]


def role_of(rank: int, pp: int) -> str:
    return "only" if pp == 1 else "first" if rank == 0 else "last" if rank == pp - 1 else "middle"


def rank_of(role: str, pp: int) -> int:
    return {"only": 0, "first": 0, "middle": 1, "last": pp - 1}[role]


@dataclass
class Context:
    """One tuning job: the specs, the space and the memory limits, shared by every table."""

    model: ModelSpec
    cluster: ClusterSpec
    prof: HardwareProfile
    seq_len: int
    global_batch_size: int
    space: SearchSpace
    fn: object = None
    gpu_limit: float = 0.0
    host_limit: float = 0.0
    separable: bool = True
    """Memory rebuilt from the two axes matched the cost model on every row checked so far."""

    def __post_init__(self) -> None:
        G = self.cluster.gpus_per_node
        # costmodel.stage.evaluate: collective sizes first, then their bandwidths on the profile's curves
        self.fn = lambda **inputs: evaluate(OUTPUTS, inputs, self.prof, G)  # noqa: E731
        self.fn_time = lambda **inputs: evaluate(("t_mb",), inputs, self.prof, G)  # noqa: E731  (the bound's)
        self.L = self.model.num_hidden_layers
        self.hardware = {k: float(v) for k, v in hardware_inputs(self.prof).items()}
        self.model_inputs = {r: model_inputs(self.model, r) for r in ("tensorwise", "rowwise")}
        # the fit rule of costmodel.hardware (fits: needed_bytes <= memory_bytes), solved for the allocated bytes
        self.gpu_limit = self.prof.usable_memory_bytes * (1 - FIT_MARGIN)
        # predict: the offloaded bytes of the worst rank, times the GPUs of a node, within the host budget
        self.host_limit = self.prof.host_budget_bytes / self.cluster.gpus_per_node * (1 - FIT_MARGIN)

    def r_min(self, v: int) -> int:
        """Fewest checkpointed blocks of a rank: 0, or one per chunk when the space excludes recompute none."""
        return 0 if "none" in self.space.recompute else v


def in_flight_by_rank(s: Schedule, pp: int, M: int) -> np.ndarray:
    """Micro-batches in flight at each rank's peak (per chunk under Interleaved1F1B), as predict counts them."""
    return np.asarray(in_flight(s.name, pp, np.arange(pp), M, s.v), dtype=float)


CHUNK_SET = ("first", "last", "nV")
"""Inputs that differ between the chunks of a rank (set per role); the rest are per case."""


def case_inputs(ctx: Context, g: Layout, cases: list[dict]) -> dict:
    """Cost-model inputs of every case of a layout, through costmodel's own plan-to-inputs mapping
    (costmodel.prediction.plan_wide_knobs, costmodel.kernels.kernel_inputs, knob_inputs, model_inputs): an array
    over cases for each input the cases set differently, a float for the rest. The per-stage counts, MoE blocks and
    chunk flags are set later."""
    keys = {k: np.array([c[k] for c in cases]) for k in cases[0]}
    kernels = kernel_inputs({k: keys[k] for k in KERNEL_KEYS if k in keys}, model=ctx.model,
                            tokens=np.full(len(cases), g.mbs * ctx.seq_len // g.cp))
    knobs = knob_inputs(b=g.mbs, s=ctx.seq_len, t=g.tp, d=g.dp, pp=g.pp, **plan_wide_knobs(SimpleNamespace(**keys)),
                        l=1.0, r=0.0, oa=0.0, os=0.0, f=0.0, m=0.0, M=g.M, first=0.0, last=0.0, nV=0.0, lm=0.0,
                        ep=g.ep, cp=g.cp, fused_loss=kernels.pop("fl"), loss_chunks=kernels.pop("nch"))
    recipes = keys["fp8_recipe"]
    model = {k: np.where(recipes == "rowwise", ctx.model_inputs["rowwise"][k], ctx.model_inputs["tensorwise"][k])
             for k in ctx.model_inputs["tensorwise"]}
    out = dict(ctx.hardware)
    for k, val in {**model, **kernels, **knobs}.items():
        if k in STAGE_SET or k in CHUNK_SET:
            continue
        a = np.asarray(val, dtype=float)
        if a.size == 1 or np.all(a == a.flat[0]):
            out[k] = float(a.flat[0])
        else:
            out[k] = np.ascontiguousarray(np.broadcast_to(a, (len(cases),)))
    return out


class RoleTable:
    """Every candidate of one rank role in one (layout, schedule), for a list of cases, built lazily by block count.

    For each number of micro-batches in flight ``m`` the role needs, it keeps per (case, block count) the
    candidates no other beats in (T, T + D) (module docstring); ``t0`` is the memory-blind least T per (case,
    block count), the tuner's lower bound."""

    def __init__(self, ctx: Context, g: Layout, s: Schedule, role: str, cases: list[dict], ms: list[float],
                 inputs: dict | None = None, slopes: dict | None = None):
        self.ctx, self.g, self.s, self.role, self.cases = ctx, g, s, role, cases
        self.v = s.v
        self.ms = sorted(set(float(m) for m in ms))
        self.evaluated: set[tuple[int, int]] = set()      # (case, n) costed
        self.front: dict[float, dict[str, list]] = {m: {k: [] for k in ("case", "n", "r", "oa", "os", "f", "T", "D")}
                                                     for m in self.ms}
        self._cols: dict = {}
        self.cut: dict[tuple[int, int], float] = {}              # (case, n) -> least cap rows were cut at
        self.cut_step: dict[int, float] = {}                     # case -> least step-time bound of a cut row
        self.rows_costed = 0
        self.inputs = inputs if inputs is not None else case_inputs(ctx, g, cases)
        S, rank = g.pp * s.v, rank_of(role, g.pp)
        chunk = np.array([rank + j * g.pp for j in range(s.v)])
        first, last = (chunk == 0).astype(float), (chunk == S - 1).astype(float)
        nV = np.asarray(vocab_matrices(first, last, S, ctx.model.tie_word_embeddings), dtype=float) * np.ones(s.v)
        self.chunk_inputs = {"first": first, "last": last, "nV": nV}
        self.chunk_kind = (first + 2 * last).astype(np.int64)      # chunks that differ in the model
        self.oa_t = None          # per-block offload slopes, costed on first use (or shared by the layout)
        self._shared = slopes if slopes is not None else {}

    def _cost(self, case: np.ndarray, n, r, oa, os_, f) -> dict[str, np.ndarray]:
        """Cost rows of rank-level counts (arrays over rows) spread over the chunks: outputs of shape (rows, v)."""
        args, finish = self._cost_args(case, n, r, oa, os_, f)
        return finish(self.ctx.fn(**args))

    def _cost_args(self, case: np.ndarray, n, r, oa, os_, f):
        """The cost model's arguments for rows of rank-level counts, and the function that turns its outputs into
        arrays (rows, v). Chunks with the same case, role in the model and counts are costed once (an interleaved
        rank's chunks repeat a few shapes)."""
        v, rows = self.v, len(case)
        chunk = {"l": even(n, v), "r": even(r, v), "os": even(os_, v), "f": np.asarray(f).reshape(rows, v),
                 "oa": even(np.asarray(r) + np.asarray(oa), v) - even(r, v)}
        ci = np.repeat(case, v)
        cols = {k: x.ravel().astype(np.int64) for k, x in chunk.items()}
        inverse = None
        if v > 1 and rows * v > 4096:       # worth the sort: large interleaved batches repeat chunk shapes
            key = ci * 4 + np.tile(self.chunk_kind, rows)
            for k in ("l", "r", "oa", "os", "f"):
                key = key * 256 + cols[k]
            _, sel, inverse = np.unique(key, return_index=True, return_inverse=True)
            pick = lambda x: x[sel]  # noqa: E731
        else:
            pick = lambda x: x  # noqa: E731
        args = {k: (val if isinstance(val, float) else pick(val[ci])) for k, val in self.inputs.items()}
        for k, x in self.chunk_inputs.items():
            args[k] = float(x[0]) if v == 1 else pick(np.tile(x, rows))
        args.update({k: pick(x).astype(float) for k, x in cols.items()})
        args["lm"] = self._moe_blocks(args["l"])
        args["m"], args["acc"] = 0.0, 0.0
        n_eval = rows * v if inverse is None else len(sel)
        self.rows_costed += n_eval

        def finish(out: dict) -> dict:
            res = {}
            for k, x in out.items():
                x = np.broadcast_to(np.asarray(x, dtype=float), (n_eval,))
                res[k] = (x if inverse is None else x[inverse.ravel()]).reshape(rows, v)
            return res
        return args, finish

    def _moe_blocks(self, l: np.ndarray | float) -> np.ndarray | float:
        """Mixture-of-experts blocks of chunks of ``l`` blocks: all or none where every block is alike
        (planner.space.uniform_blocks), else counted for the role's place in the model with one chunk per rank
        (planner.space.moe_layers_of_role) and in proportion under interleaving; predict counts them from the
        actual split, and the tuner keeps a plan only as predict costs it (Search.offer)."""
        model = self.ctx.model
        if uniform_blocks(model):
            return np.asarray(l, dtype=float) * float(model.is_moe)
        if self.v == 1:
            return moe_layers_of_role(model, self.role, np.asarray(l), self.g.pp)
        share = model.moe_layers_in(0, model.num_hidden_layers) / model.num_hidden_layers
        return np.floor(np.asarray(l, dtype=float) * share)

    def _fp8_counts(self, case: np.ndarray, n: np.ndarray, on: np.ndarray) -> np.ndarray:
        """Float8 blocks per chunk, (rows, v): the most the user allows in each chunk where ``on``, else 0."""
        frac = self.ctx.space.max_fp8_fraction
        return np.where(on[:, None], np.floor(frac * even(n, self.v) + 1e-9), 0).astype(np.int64)

    def _offload_slopes(self) -> None:
        """Per case: time, once-per-step extra, GPU bytes per micro-batch and host bytes per micro-batch that one more
        activation-offloaded block adds (two evaluations of one chunk, 0 and 1 offloaded blocks). A block's offload
        does not depend on the rank's role or chunks, so a layout's tables share them (``slopes``)."""
        if "oa_t" in self._shared:
            self.oa_t, self.oa_d, self.oa_gpu, self.oa_host = (self._shared[k] for k in ("oa_t", "oa_d", "oa_gpu",
                                                                                          "oa_host"))
            return
        nc, v = len(self.cases), self.v
        case = np.repeat(np.arange(nc), 2)
        n = np.full(2 * nc, 2 * v)
        oa = np.tile([0, v], nc)                                 # one offloaded block per chunk
        out = self._cost(case, n, np.zeros(2 * nc, dtype=np.int64), oa, np.zeros(2 * nc, dtype=np.int64),
                         np.zeros((2 * nc, v), dtype=np.int64))
        diff = lambda k: (out[k][1::2] - out[k][0::2]).sum(axis=1) / v  # noqa: E731  per offloaded block
        self.oa_t, self.oa_d = diff("t_mb"), diff("delta")
        self.oa_gpu, self.oa_host = -diff("act_per_microbatch"), diff("host_act_per_microbatch")
        self._shared.update(oa_t=self.oa_t, oa_d=self.oa_d, oa_gpu=self.oa_gpu, oa_host=self.oa_host)

    # ---- rows --------------------------------------------------------------------------------------------
    def _grid(self, ns, case_ids=None, r_vals=None, os_vals=None) -> dict[str, np.ndarray]:
        """Rank-level rows: every case (of ``case_ids``) × block count × r × os × float8 choice. ``r_vals(n)`` and
        ``os_vals(n)`` give the counts to use (default: every count the space allows)."""
        ctx, v = self.ctx, self.v
        case_ids = np.arange(len(self.cases)) if case_ids is None else np.asarray(case_ids, dtype=np.int64)
        parts = []
        for n in ns:   # one block of rows per block count, shared by every case
            rs = r_vals(n) if r_vals else np.arange(min(ctx.r_min(v), n), n + 1)
            oss = (os_vals(n) if os_vals else np.arange(0, n + 1)) if ctx.space.offload else np.array([0])
            R, O, F = np.meshgrid(rs, oss, (0, 1), indexing="ij")
            parts.append((np.full(R.size, n), R.ravel(), O.ravel(), F.ravel()))
        n, r, os_, fon = (np.concatenate([p[i] for p in parts]) for i in range(4))
        none = np.array([self.cases[c]["recompute"] == "none" for c in case_ids])
        fp8 = np.array([fp8_allowed(ctx.space, self.cases[c]) for c in case_ids])
        keep = (~none[:, None] | (r[None, :] == 0)) & (fp8[:, None] | (fon[None, :] == 0))
        ci, ri = np.nonzero(keep)
        rows = {"case": case_ids[ci], "n": n[ri], "r": r[ri], "os": os_[ri], "fon": fon[ri].astype(bool)}
        f = self._fp8_counts(rows["case"], rows["n"], rows["fon"])
        dup = rows["fon"] & (f.sum(axis=1) == 0)     # float8 on but none fits the share: the f = 0 row again
        rows = {k: x[~dup] for k, x in rows.items()}
        rows["f_chunks"] = f[~dup]
        rows["f"] = rows["f_chunks"].sum(axis=1)
        return rows

    def _evaluate(self, rows: dict) -> dict:
        return self._cost(rows["case"], rows["n"], rows["r"], np.zeros_like(rows["r"]), rows["os"], rows["f_chunks"])

    def t0_rows(self, ns) -> dict:
        """The rows ``t0`` costs: for each count, the least r, no offload, float8 off and (where allowed) on."""
        ctx, v = self.ctx, self.v
        ns = np.asarray(ns, dtype=np.int64)
        C = len(self.cases)
        case = np.repeat(np.arange(C), 2 * len(ns))
        n = np.tile(np.repeat(ns, 2), C)
        fon = np.tile([False, True], C * len(ns))
        fp8 = np.array([fp8_allowed(ctx.space, c) for c in self.cases])
        rows = {"case": case, "n": n, "r": np.minimum(ctx.r_min(v), n), "os": np.zeros_like(n), "fon": fon}
        f = self._fp8_counts(case, n, fon)
        keep = ~fon | (fp8[case] & (f.sum(axis=1) > 0))
        rows = {k: x[keep] for k, x in rows.items()}
        rows["f_chunks"] = f[keep]
        return rows

    def t0(self, ns, costed: tuple[dict, dict] | None = None, dense=None) -> np.ndarray | None:
        """Memory-blind least time per micro-batch, (cases, len(ns)): no checkpointing beyond the least the space
        allows, no offload, the faster float8 choice. Every candidate with that block count is at least this slow
        (time never falls with more checkpointed or offloaded blocks).

        Every block of a rank costs the same in the cost model, so this time is linear in the block count: it is
        costed at five counts (``t0_sample``; ``costed`` = those rows and their outputs when the caller batched
        them), and at every count only for the cases where those five are not on one line (``dense`` = the caller's
        batch of those; None when it is needed comes back as None: cost ``t0_rows(ns)`` of them and call again)."""
        ns = np.asarray(ns, dtype=np.int64)
        sample = self.t0_sample(ns)
        if costed is None:
            rows = self.t0_rows(sample)
            costed = (rows, self._evaluate(rows))
        rows, out = costed
        T = rank_sum(out["t_mb"])
        C = len(self.cases)
        res = np.full((C, len(ns)), math.inf)
        key = rows["case"] * 2 + rows["fon"]
        col = np.searchsorted(sample, rows["n"])
        Y = np.full((2 * C, len(sample)), np.nan)
        Y[key, col] = T
        present = np.zeros(2 * C, dtype=bool)
        present[key] = True
        full = present & ~np.isnan(Y).any(axis=1)
        x = sample.astype(float)
        if len(sample) > 1:
            slope = (Y[:, -1] - Y[:, 0]) / (x[-1] - x[0])
            line_ok = np.all(np.isclose(Y, Y[:, :1] + slope[:, None] * (x[None, :] - x[0]), rtol=1e-9, atol=1e-12),
                             axis=1)
        else:
            slope, line_ok = np.zeros(len(Y)), np.ones(len(Y), dtype=bool)
        good = full & line_ok
        lines = np.where(good[:, None], Y[:, :1] + slope[:, None] * (ns[None, :] - x[0]), math.inf)
        res = np.minimum(lines[0::2], lines[1::2])
        if (present & ~good).any():
            if dense is None:
                drows = self.t0_rows(ns)
                dense = (drows, self._evaluate(drows))
            drows, dout = dense
            bad = np.unique(np.nonzero(present & ~good)[0] // 2)
            sel = np.isin(drows["case"], bad)
            res[bad] = math.inf
            np.minimum.at(res, (drows["case"][sel], np.searchsorted(ns, drows["n"][sel])),
                          rank_sum(dout["t_mb"])[sel])
        return res

    @staticmethod
    def t0_sample(ns: np.ndarray) -> np.ndarray:
        return np.unique(ns[[0, min(1, len(ns) - 1), len(ns) // 2, max(len(ns) - 2, 0), len(ns) - 1]])

    # ---- the two axes, and what they tell about the rows between them ----------------------------------------
    def _axes(self, rows: dict) -> np.ndarray:
        return (rows["r"] == np.minimum(self.ctx.r_min(self.v), rows["n"])) | (rows["os"] == 0)

    def _lookup(self, a_rows: dict):
        base = 256

        def key(c, n, r, o, f):
            return (((c.astype(np.int64) * base + n) * base + r) * base + o) * 2 + f.astype(np.int64)
        keys = key(a_rows["case"], a_rows["n"], a_rows["r"], a_rows["os"], a_rows["fon"])
        order = np.argsort(keys)
        skeys = keys[order]

        def find(c, n, r, o, f):
            k = key(c, n, r, o, f)
            i = np.clip(np.searchsorted(skeys, k), 0, max(len(skeys) - 1, 0))
            found = skeys[i] == k if len(skeys) else np.zeros(len(k), dtype=bool)
            return np.where(found, order[i] if len(order) else 0, -1)
        return find

    def _between(self, a_rows: dict, a_out: dict, rows: dict, r_ref=None) -> dict:
        """For rows off the axes: their memory terms, rebuilt from the axes — ``X(r, os) = X(r, 0) + X(r0, os) −
        X(r0, 0)`` (checkpointing and state offload change separate memory terms, checked by ``_check``) — and a
        floor of their time per micro-batch, ``max(T(r, 0), T(r0, os))`` (time never falls with either count).
        ``r_ref`` (optional) takes the r of the axis row to read instead of each row's own (coarse axes)."""
        find = self._lookup(a_rows)
        c, n, o, f = rows["case"], rows["n"], rows["os"], rows["fon"]
        r = rows["r"] if r_ref is None else r_ref
        r0 = np.minimum(self.ctx.r_min(self.v), n)
        i_r, i_o, i_0 = find(c, n, r, np.zeros_like(o), f), find(c, n, r0, o, f), find(c, n, r0, np.zeros_like(o), f)
        ok = (i_r >= 0) & (i_o >= 0) & (i_0 >= 0)
        i_r, i_o, i_0 = (np.maximum(i, 0) for i in (i_r, i_o, i_0))
        v = self.v
        stack = np.concatenate([a_out[k] for k in MEMORY], axis=1)           # (axis rows, keys·v)
        rebuilt = stack[i_r] + stack[i_o] - stack[i_0]
        out = {k: rebuilt[:, j * v:(j + 1) * v] for j, k in enumerate(MEMORY)}
        T = rank_sum(a_out["t_mb"])
        return {"mem": out, "floor": np.where(ok, np.maximum(T[i_r], T[i_o]), -math.inf),
                "D_os": rank_sum(a_out["delta"])[i_o], "ok": ok}

    def _check(self, rows: dict, between: dict, out: dict) -> None:
        """Compare rebuilt memory and time floors with the cost model's own values on (up to 64 of the) costed rows;
        a mismatch turns the rebuilding off for the rest of the search (everything is then costed)."""
        n = len(rows["r"])
        if not n:
            return
        pick = np.unique(np.linspace(0, n - 1, min(n, 64)).astype(int))
        got = np.concatenate([between["mem"][k][pick] for k in MEMORY], axis=1)
        want = np.concatenate([out[k][pick] for k in MEMORY], axis=1)
        T = rank_sum(out["t_mb"][pick])
        if not np.allclose(got, want, rtol=1e-9, atol=1.0) or np.any(T < between["floor"][pick] * (1 - 1e-12) - 1e-15):
            self.ctx.separable = False
        if self.g.pp > 1 and not np.allclose(between["D_os"][pick], rank_sum(out["delta"][pick]), rtol=1e-9,
                                             atol=1e-12):
            self.ctx.separable = False

    # ---- exact candidates ----------------------------------------------------------------------------------
    def add(self, ns, cases=None, cap=None) -> None:
        """Cost every candidate of the block counts ``ns`` (for the case indices ``cases``, default all) not costed
        yet, and keep, per m, the reduced set. ``cap(case, n)`` (arrays) is a time per micro-batch at or above
        which a candidate cannot win (a ``Cap``); candidates whose floor reaches it are not costed, and the cap
        they were cut at is kept as their least time."""
        cases = range(len(self.cases)) if cases is None else [int(c) for c in cases]
        todo: dict[int, list[int]] = {}
        for c in cases:
            for n in ns:
                if n >= self.v and (c, int(n)) not in self.evaluated:
                    todo.setdefault(int(n), []).append(c)
        if not todo:
            return
        by_cases: dict[tuple, list[int]] = {}
        for n, cs in todo.items():
            by_cases.setdefault(tuple(cs), []).append(n)
        for cs, n_list in by_cases.items():
            self.evaluated.update((c, n) for c in cs for n in n_list)
            self._add(sorted(n_list), list(cs), cap)

    def _add(self, ns: list[int], cases: list[int], cap) -> None:
        if self.oa_t is None:
            self._offload_slopes()
        rows, out = self._candidates(self._grid(ns, case_ids=cases), cap)
        ci = rows["case"]
        T0, D0 = rank_sum(out["t_mb"]), rank_sum(out["delta"])
        pfb = in_step_peak(out)
        for m in self.ms:
            oa, ok = self._least_offload(rows, out, pfb, m)
            T = T0 + oa * self.oa_t[ci]
            D = D0 + oa * self.oa_d[ci]
            self._keep(m, rows, oa, T, D, ok)

    def _candidates(self, grid: dict, cap) -> tuple[dict, dict]:
        """Cost the rows on the two axes (least r, or no state offload); of the rows between, only those that fit at
        the role's fewest micro-batches in flight and whose time floor (plus the least activation offload) is
        below the cap. Rebuilt memory and floors are checked on the rows costed (``_check``)."""
        axis = self._axes(grid)
        a_rows = {k: x[axis] for k, x in grid.items()}
        a_out = self._evaluate(a_rows)
        rest = {k: x[~axis] for k, x in grid.items()}
        if not len(rest["r"]):
            return a_rows, a_out
        go = np.ones(len(rest["r"]), dtype=bool)
        btw = None
        if self.ctx.separable:
            btw = self._between(a_rows, a_out, rest)
            pfb = in_step_peak(btw["mem"])
            oa, fits = self._least_offload(rest, btw["mem"], pfb, self.ms[0])
            floor = btw["floor"] + oa * self.oa_t[rest["case"]]
            go = fits | ~btw["ok"]
            if cap is not None:
                limit = cap.time(rest["case"], rest["n"])
                cut = go & btw["ok"] & (floor >= limit)
                if cut.any():
                    key = rest["case"][cut] * 4096 + rest["n"][cut]
                    uniq, inv = np.unique(key, return_inverse=True)
                    least = np.full(len(uniq), math.inf)
                    np.minimum.at(least, inv.ravel(), limit[cut])
                    for kk, lim in zip(uniq, least):
                        k = (int(kk // 4096), int(kk % 4096))
                        self.cut[k] = min(self.cut.get(k, math.inf), float(lim))
                        self.cut_step[k[0]] = min(self.cut_step.get(k[0], math.inf), cap.step)
                go &= ~cut
        if not go.any():
            return a_rows, a_out
        g_rows = {k: x[go] for k, x in rest.items()}
        g_out = self._evaluate(g_rows)
        if btw is not None:
            self._check(g_rows, {"mem": {k: x[go] for k, x in btw["mem"].items()}, "floor": btw["floor"][go],
                                 "D_os": btw["D_os"][go]}, g_out)
            if not self.ctx.separable:     # a model the rebuilding does not describe: cost every row
                g_rows, g_out = rest, self._evaluate(rest)
        rows = {k: np.concatenate([a_rows[k], g_rows[k]]) for k in a_rows}
        out = {k: np.concatenate([a_out[k], g_out[k]]) for k in a_out}
        return rows, out

    # ---- a memory-aware floor per block count (the bound) -------------------------------------------------------
    def floors(self, ns: list[int], m: float, cases=None, samples: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Per (case, n): a floor of the time per micro-batch and of the once-per-step extra of every candidate with
        n blocks that fits with ``m`` micro-batches in flight (inf where none can), from the full state-offload
        axis and ``samples`` checkpoint counts: a candidate with r between samples r_k ≤ r < r_k+1 is at least as
        slow as at r_k and needs at least the memory of r_k+1 (each count only lowers memory), and a rank's peak is
        at least the larger of its chunks' summed forward and backward peaks. GPU memory falls with every
        state-offloaded block, so the least os that fits the GPU is found by bisection; the time floor takes that os
        and the activation offload of the most os, the host check the state of that os and that offload (each the
        least any fitting os needs), the extra floor the least extra over the os that fit. Memory between the axes
        is rebuilt as in ``_between``; without that rebuilding (``Context.separable`` False) the floors are the
        memory-blind ones (time) and 0 (extra)."""
        if self.oa_t is None:
            self._offload_slopes()
        ctx, v = self.ctx, self.v
        cases = np.arange(len(self.cases)) if cases is None else np.asarray(cases, dtype=np.int64)
        T1 = np.full((len(self.cases), len(ns)), -math.inf)
        D1 = np.zeros((len(self.cases), len(ns)))
        if not ctx.separable:
            return T1, D1
        C, Nn = len(cases), len(ns)
        ns_a = np.asarray(ns, dtype=np.int64)
        none = np.array([self.cases[c]["recompute"] == "none" for c in cases])
        # padded axes: (count, sample) r values, (count, os) os values; padding repeats the last value
        r0 = np.minimum(ctx.r_min(v), ns_a)
        R = samples
        r_pad = np.round(r0[:, None] + (ns_a - r0)[:, None] * np.linspace(0, 1, R)[None, :]).astype(np.int64)
        O = int(ns_a.max()) + 1 if ctx.space.offload else 1
        o_pad = np.minimum(np.arange(O)[None, :], ns_a[:, None]) if ctx.space.offload else np.zeros((Nn, 1), int)
        # rows: r axis (case, count, r, float8) at os = 0, then os axis (case, count, os, float8) at r0
        cr = np.broadcast_to(cases[:, None, None, None], (C, Nn, R, 2)).ravel()
        nr = np.broadcast_to(ns_a[None, :, None, None], (C, Nn, R, 2)).ravel()
        rr = np.broadcast_to(r_pad[None, :, :, None], (C, Nn, R, 2)).ravel()
        fr = np.broadcast_to(np.array([0, 1])[None, None, None, :], (C, Nn, R, 2)).ravel()
        co = np.broadcast_to(cases[:, None, None, None], (C, Nn, O, 2)).ravel()
        no = np.broadcast_to(ns_a[None, :, None, None], (C, Nn, O, 2)).ravel()
        ro = np.broadcast_to(r0[None, :, None, None], (C, Nn, O, 2)).ravel()
        oo = np.broadcast_to(o_pad[None, :, :, None], (C, Nn, O, 2)).ravel()
        fo = np.broadcast_to(np.array([0, 1])[None, None, None, :], (C, Nn, O, 2)).ravel()
        cc, nn, rr_, oo_, ff = (np.concatenate(x) for x in ((cr, co), (nr, no), (rr, ro), (np.zeros_like(rr), oo),
                                                             (fr, fo)))
        f = self._fp8_counts(cc, nn, ff.astype(bool))
        out = self._cost(cc, nn, rr_, np.zeros_like(rr_), oo_, f)
        split = C * Nn * R * 2
        fp8 = np.array([fp8_allowed(ctx.space, self.cases[c]) for c in cases])
        ok_f = (ff[:split] == 0) | ((f[:split].sum(axis=1) > 0) & fp8[np.searchsorted(cases, cc[:split])])
        ok_f = ok_f.reshape(C, Nn, R, 2)[:, :, 0, :]                            # (case, count, float8)
        keys = (*IN_STEP_PHASES, "peak_optimizer", "act_per_microbatch", "accumulator_bytes", "host_state")
        # a rank's chunks summed (the peak of a sum is at most the sum of the chunks' peaks: a lower bound)
        ax_r = {k: out[k][:split].reshape(C, Nn, R, 2, v).sum(-1) for k in keys + ("t_mb",)}
        ax_o = {k: out[k][split:].reshape(C, Nn, O, 2, v).sum(-1) for k in keys + ("t_mb", "delta")}
        nxt = np.minimum(np.arange(R) + 1, R - 1)                                # memory of the next r sample
        acc = 1.0 if self.g.M > m else 0.0
        # memory at (next r sample, os) = r part + os part − shared origin; "none" cases keep r = 0
        part_r = {k: np.where(none[:, None, None, None], ax_r[k][:, :, :1], ax_r[k][:, :, nxt]) - ax_r[k][:, :, :1]
                  for k in keys}                                                  # (case, count, r, float8)
        plain = np.maximum(m * self.oa_gpu[cases], 1e-30)[:, None, None, None]
        room = (ns_a[:, None] - r_pad)[None, :, :, None]

        def fits_at(o):        # GPU fit at os index o (case, count, r, float8): falls with os, so bisect
            def g(k):
                return part_r[k] + np.take_along_axis(ax_o[k], o, axis=2)
            base = np.max([g(ph) for ph in IN_STEP_PHASES], axis=0) + m * g("act_per_microbatch") \
                + acc * g("accumulator_bytes")
            oa = np.maximum(np.ceil((base - ctx.gpu_limit) / plain - 1e-9), 0)
            return (oa <= room) & (g("peak_optimizer") <= ctx.gpu_limit), oa
        shape = (C, Nn, R, 2)
        top = np.broadcast_to(np.minimum(ns_a, O - 1)[None, :, None, None], shape).copy()
        ok_any, oa_least = fits_at(top)               # at the most state offload: the least activation offload
        lo, hi = np.zeros(shape, dtype=np.int64), top.copy()
        while True:
            todo = ok_any & (lo < hi)
            if not todo.any():
                break
            mid = (lo + hi) // 2
            f_mid, _ = fits_at(mid)
            hi = np.where(todo & f_mid, mid, hi)
            lo = np.where(todo & ~f_mid, mid + 1, lo)
        # host: the state of the least os that fits and the activation offload of the most os are each the least
        host = part_r["host_state"] + np.take_along_axis(ax_o["host_state"], lo, axis=2) \
            + m * oa_least * self.oa_host[cases][:, None, None, None]
        fits = ok_any & ok_f[:, :, None, :] & (host <= ctx.host_limit)
        fits &= ~(none[:, None, None, None] & (np.arange(R)[None, None, :, None] > 0))
        # time: at least that of the cell's r and of the least os that fits, plus the least activation offload
        T = np.maximum(ax_r["t_mb"], np.take_along_axis(ax_o["t_mb"], lo, axis=2)) \
            + oa_least * self.oa_t[cases][:, None, None, None]
        T1[cases] = np.where(fits, T, math.inf).reshape(C, Nn, -1).min(axis=2)
        if self.g.pp > 1:    # extra: the least over the os that fit (a suffix), read from suffix minima
            d = ax_o["delta"]
            suffix = np.minimum.accumulate(d[:, :, ::-1], axis=2)[:, :, ::-1]
            D = np.take_along_axis(suffix, lo, axis=2)
            D1[cases] = np.where(fits, D, math.inf).reshape(C, Nn, -1).min(axis=2)
        else:
            D1[cases] = np.where(np.isfinite(T1[cases]), 0.0, math.inf)
        D1[np.isinf(T1)] = math.inf
        return T1, D1

    def _least_offload(self, rows: dict, out: dict, pfb: np.ndarray, m: float) -> tuple[np.ndarray, np.ndarray]:
        """Least activation-offloaded blocks with which a row fits the GPU at ``m`` micro-batches in flight, and
        whether it then fits the host too."""
        ctx, v, ci = self.ctx, self.v, rows["case"]
        acc = 1.0 if self.g.M > m else 0.0
        plain = self.oa_gpu[ci][:, None]
        base = pfb + m * out["act_per_microbatch"] + acc * out["accumulator_bytes"]
        po = out["peak_optimizer"]
        r, room = rows["r"], rows["n"] - rows["r"]

        r_even = even(r, v)

        def gpu(oa):
            shed = oa[:, None] if v == 1 else even(r + oa, v) - r_even
            return rank_sum(np.maximum(base - m * shed * plain, po))
        lo, hi = np.zeros_like(room), room.copy()
        ok = gpu(hi) <= ctx.gpu_limit
        if v == 1:       # closed form, then one step either way for rounding
            over = base[:, 0] - ctx.gpu_limit
            guess = np.ceil(np.maximum(over, 0) / np.maximum(m * plain[:, 0], 1e-30))
            lo = np.clip(guess, 0, room).astype(np.int64)
            lo = np.where((lo < room) & (gpu(lo) > ctx.gpu_limit), lo + 1, lo)
            lo = np.where((lo > 0) & (gpu(np.maximum(lo - 1, 0)) <= ctx.gpu_limit), lo - 1, lo)
            ok &= gpu(lo) <= ctx.gpu_limit
        else:            # bisection: GPU memory falls with every offloaded block
            lo = np.where(ok, lo, hi)
            while True:
                todo = lo < hi
                if not todo.any():
                    break
                mid = (lo + hi) // 2
                fits = gpu(mid) <= ctx.gpu_limit
                hi = np.where(todo & fits, mid, hi)
                lo = np.where(todo & ~fits, mid + 1, lo)
        host = rank_sum(out["host_state"]) + m * lo * self.oa_host[ci]
        return lo, ok & (host <= ctx.host_limit)

    def _keep(self, m: float, rows: dict, oa: np.ndarray, T: np.ndarray, D: np.ndarray, ok: np.ndarray) -> None:
        idx = np.nonzero(ok)[0]
        if len(idx) == 0:
            return
        ci, n, t, d = rows["case"][idx], rows["n"][idx], T[idx], D[idx]
        keep = idx[self._reduce(ci, n, t, d)]
        fr = self.front[m]
        for k, col in (("case", rows["case"]), ("n", rows["n"]), ("r", rows["r"]), ("oa", oa), ("os", rows["os"]),
                       ("f", rows["f"]), ("T", T), ("D", D)):
            fr[k].append(col[keep])
        self._cols.pop(m, None)

    def _reduce(self, ci, n, t, d) -> np.ndarray:
        """The candidates a rank keeps (module docstring): with one chunk per rank (b = 1), those no other beats in
        T and T + D; under Interleaved1F1B (b = 1/v) the last rank's no other beats in T and b·T + D, and an earlier
        rank keeps one candidate per distinct T (the least D): there a slower rank can hide more of a later rank's
        extra than it adds to the bubble, so no faster candidate is always better."""
        if self.v == 1:
            return reduce_front(ci, n, t, t + d)
        if self.role in ("last", "only"):
            return reduce_front(ci, n, t, t / self.v + d)
        order = np.lexsort((d, t, n, ci))
        first = np.ones(len(order), dtype=bool)
        c_o, n_o, t_o = ci[order], n[order], t[order]
        first[1:] = (c_o[1:] != c_o[:-1]) | (n_o[1:] != n_o[:-1]) | (t_o[1:] != t_o[:-1])
        return np.sort(order[first])

    def _columns(self, m: float) -> dict | None:
        if m not in self._cols:
            fr = self.front[m]
            self._cols[m] = {k: np.concatenate(v) for k, v in fr.items()} if fr["case"] else None
        return self._cols[m]

    def options(self, m: float, case: int) -> "Options":
        """The reduced candidates of one case at ``m`` in flight, over every block count costed so far."""
        cols = self._columns(m)
        if cols is None:
            return Options.empty()
        sel = cols["case"] == case
        return Options(**{k: cols[k][sel] for k in ("n", "r", "oa", "os", "f", "T", "D")})

    def at(self, m: float, case: int, n: int) -> tuple[np.ndarray, np.ndarray, float]:
        """The kept candidates' T and D with n blocks, and the least cap candidates there were cut at (inf if
        none): every fitting candidate with n blocks is one of these, or at least as slow as that cap."""
        cols = self._columns(m)
        cut = self.cut.get((case, n), math.inf)
        if cols is None:
            return np.zeros(0), np.zeros(0), cut
        sel = (cols["case"] == case) & (cols["n"] == n)
        return cols["T"][sel], cols["D"][sel], cut

    def cut_bound(self, case: int) -> float:
        """A lower bound of the step time of any plan using a candidate of this case that a cap cut (inf if none
        was cut): the threshold the cap came from."""
        return self.cut_step.get(case, math.inf)


def in_step_peak(out: dict) -> np.ndarray:
    """The largest of the in-step phase peaks (forward, loss, backward) before the micro-batches in flight."""
    return np.max([out[ph] for ph in IN_STEP_PHASES], axis=0)


def cost_batch(ctx: Context, jobs: list[tuple["RoleTable", dict]], limit: int = 200_000, fn=None) -> list[dict]:
    """Cost the rows of several tables in as few calls of the cost model as fit ``limit`` rows each (each call has
    a fixed cost of about a millisecond, whatever its length); returns each job's outputs (rows, v)."""
    results: list[dict | None] = [None] * len(jobs)
    prepared = [rt._cost_args(rows["case"], rows["n"], rows["r"], np.zeros_like(rows["r"]), rows["os"],
                              rows["f_chunks"]) for rt, rows in jobs]
    lengths = [_length(a) for a, _ in prepared]
    i = 0
    while i < len(prepared):
        j, size = i, 0
        while j < len(prepared) and (size == 0 or size + lengths[j] <= limit):
            size += lengths[j]
            j += 1
        group, lens = prepared[i:j], lengths[i:j]
        args = {}
        for k in group[0][0]:
            vals = [a[k] for a, _ in group]
            first = vals[0]
            if isinstance(first, float) and all(x == first for x in vals if isinstance(x, float)) and \
                    all(isinstance(x, float) for x in vals):
                args[k] = first
            else:
                args[k] = np.concatenate([x if not isinstance(x, float) else np.full(n, x)
                                          for x, n in zip(vals, lens)])
        out = (fn or ctx.fn)(**args)
        at = 0
        for idx, ((a, finish), n) in enumerate(zip(group, lens)):
            results[i + idx] = finish({k: (x if np.ndim(x) == 0 else np.asarray(x)[at:at + n]) for k, x in out.items()})
            at += n
        i = j
    return results


def _length(args: dict) -> int:
    return len(args["l"])


@dataclass
class Cap:
    """A time per micro-batch at or above which a rank's candidate cannot give a step time below ``step``."""

    time: object
    """(case indices, block counts) -> cap, arrays."""
    step: float
    """The step-time threshold the caps come from: a plan using a cut candidate takes at least this long."""


def reduce_front(case: np.ndarray, n: np.ndarray, T: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Indices of the rows no other row of the same (case, n) beats in both T and S (ties: the first row)."""
    if len(T) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((S, T, n, case))
    seg = np.ones(len(order), dtype=bool)
    seg[1:] = (case[order][1:] != case[order][:-1]) | (n[order][1:] != n[order][:-1])
    seg_id = np.cumsum(seg) - 1
    # running minimum of S within each segment, in exact integer ranks (no floating offsets)
    rank = np.empty(len(order), dtype=np.int64)
    rank[np.argsort(S[order], kind="stable")] = np.arange(len(order))
    shifted = rank - seg_id * len(order)
    run = np.minimum.accumulate(shifted)
    prev = np.concatenate(([np.iinfo(np.int64).max], run[:-1]))
    prev = np.where(seg, np.iinfo(np.int64).max, prev)
    keep = shifted < prev
    return np.sort(order[keep])


@dataclass
class Options:
    """A stage position's candidates: block count, the four counts, T and D (arrays, same length)."""

    n: np.ndarray
    r: np.ndarray
    oa: np.ndarray
    os: np.ndarray
    f: np.ndarray
    T: np.ndarray
    D: np.ndarray

    @staticmethod
    def empty() -> "Options":
        z = np.zeros(0)
        return Options(z.astype(np.int64), *(z.astype(np.int64) for _ in range(4)), z, z)

    def __len__(self) -> int:
        return len(self.T)

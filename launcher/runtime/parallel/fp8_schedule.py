"""Which blocks run in float8 at each step, and the loss-sensitivity estimate that steers the choice.

DPQuant's two ideas on top of the switchable torchao float8 Linears of ``fp8.py``:
(i) rotation: every ``fp8_rotation_steps`` steps (a period) each stage runs a new set of ``fp8_layers`` blocks in
float8; (ii) loss-aware priority: with ``fp8_temperature`` T > 0 the set is drawn at random, block b with weight
s_b^(-1/T) where s_b is its measured sensitivity, so sensitive blocks stay in bf16 more often and every block
keeps a chance; T = 0 is the deterministic sliding window.

The sensitivity (``block_sensitivity``) is the second-order loss increase that quantising a block's weights would
cause, Σ g²·Δw² over its float8 Linears: the empirical-Fisher diagonal g² (the step's own gradients) in place of
the Hessian, Δw the e4m3 rounding error under torchao's scale. It needs no extra forward or backward and works
under every parallelism, for a few passes over the weights. Rejected: the direct measurement (the loss of a probe
micro-batch with one block at a time in float8) takes L + 1 forwards, a forward through the whole pipeline
outside its schedule, and no-grad recompiles of every compiled block; the first-order |Σ g·Δw| is one draw of a
sum of random-sign terms (its expected size is the square root of ours), far noisier. What the estimate misses:
the float8 rounding of activations and output gradients, which scale with the same blocks' tensors.

Every rank computes the same schedule: the probe is summed over ranks exactly (``math.fsum``), the draws use a
generator seeded by (seed, stage, period) alone, and the state (the smoothed sensitivities and the snapshot the
current period was drawn from) travels in the checkpoint, so a resumed run draws the same sets.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)
"""torchao casts weights to e4m3 in forward (both recipes), scaled so that amax lands on this value."""
AMAX_EPS = 1e-12
"""torchao's floor under amax (torchao.float8.float8_utils.EPS)."""
ROW_STRIDE = 4
"""The probe reads every 4th output row of a weight (scaled by the row ratio: an unbiased estimate of the sum of
millions of terms) at about a third of the HBM traffic of all rows; amax still reads the whole weight."""
EMA_DECAY = 0.7
"""Each probe moves the smoothed sensitivity 30 % of the way: a memory of ~3 probes, about one rotation period
when probes cost 1 % of the step, so one noisy probe cannot flip a draw and a drifting block is followed."""
SENSITIVITY_FLOOR = 1e-6
"""Sensitivities below this share of the stage's largest count as this: keeps -log(s) finite and bounds the
weight ratio of two blocks at 1e6^(1/T)."""


def sliding_window(period: int, *, num_blocks: int, total: int) -> list[int]:
    """Stage-local blocks in float8 in rotation period ``period``: [w, w + n) modulo B with w = period·n mod B, so
    over B / n periods every block spends the same number of steps in float8."""
    if num_blocks >= total:
        return list(range(total))
    start = period * num_blocks % total
    return sorted((start + i) % total for i in range(num_blocks))


def sample_blocks(sensitivity: np.ndarray, *, num_blocks: int, temperature: float, seed: int, stage: int,
                  period: int) -> list[int]:
    """``num_blocks`` stage-local blocks drawn without replacement, block b with weight s_b^(-1/T): the n largest
    -log(s_b)/T + Gumbel noise (Gumbel-top-k, Kool et al. 2019). The noise depends on (seed, stage, period) only;
    all-zero sensitivities (no probe yet) make every block equally likely."""
    total = len(sensitivity)
    if num_blocks >= total:
        return list(range(total))
    s = np.asarray(sensitivity, dtype=np.float64)
    top = float(s.max())
    log_weight = -np.log(np.maximum(s, top * SENSITIVITY_FLOOR)) / temperature if top > 0 else np.zeros(total)
    noise = np.random.default_rng([seed % 2**63, stage, period]).gumbel(size=total)
    return sorted(np.argsort(-(log_weight + noise), kind="stable")[:num_blocks].tolist())


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _counts_once(p: torch.Tensor) -> bool:
    """Whether this rank's shard of ``p`` enters a sum over ranks: copies past the first along a replicated mesh
    dimension (zero 0's replicas, a replicated TP weight) do not."""
    if not isinstance(p, DTensor):
        return True
    coord = p.device_mesh.get_coordinate()
    return all(c == 0 for c, pl in zip(coord, p.placements) if pl.is_replicate())


def fisher_term(w: torch.Tensor, g: torch.Tensor, amax: torch.Tensor | None) -> torch.Tensor:
    """Σ g²·Δw² of one weight shard, from every ROW_STRIDE-th row scaled to all rows. ``amax`` is the whole
    weight's (tensorwise scaling); None scales each row by its own amax (torchao's rowwise recipe; a row split by
    TP gets its local part's). Computed in the scaled domain: Δw·scale = e4m3(w·scale) - w·scale."""
    rows, grads = w[::ROW_STRIDE], g[::ROW_STRIDE]
    if amax is None:
        amax = torch.linalg.vector_norm(rows, ord=math.inf, dim=-1)
    scale = E4M3_MAX / amax.float().clamp(min=AMAX_EPS)
    x = rows.float() * (scale[:, None] if scale.dim() else scale)
    x.clamp_(-E4M3_MAX, E4M3_MAX)   # fp32 rounding of the product may step past the largest e4m3 (NaN)
    err = x.to(torch.float8_e4m3fn).float().sub_(x).mul_(grads)
    per_row = torch.linalg.vector_norm(err, dim=-1) / scale
    return per_row.square().sum() * (w.shape[0] / rows.shape[0])


def block_sensitivity(linears: dict[int, list[tuple[int, nn.Module]]], *, num_layers: int, width: int,
                      recipe: str, device: torch.device) -> np.ndarray:
    """s_b = Σ g²·Δw² over the float8 Linears of every block b of the model (zeros where a rank holds none), the
    same float64 array on every rank. Collective: every rank calls it after backward, before the optimizer step.
    ``linears`` maps a global block index to (slot, Linear) with slot < ``width`` the Linear's place in its
    block, the same on every rank, so the tensorwise amax of each weight is one all-reduce over all ranks."""
    amax = torch.zeros(num_layers, width, dtype=torch.float32, device=device)
    if recipe == "tensorwise":
        for b, lins in linears.items():
            for j, lin in lins:
                w = _local(lin.weight)
                if w.numel():
                    amax[b, j] = torch.linalg.vector_norm(w.detach(), ord=math.inf).to(device)
        dist.all_reduce(amax, op=dist.ReduceOp.MAX)
    terms = torch.zeros(num_layers, dtype=torch.float64, device=device)
    with torch.no_grad():
        for b, lins in linears.items():
            for j, lin in lins:
                p = lin.weight
                if p.grad is None or not _counts_once(p) or not _local(p).numel():
                    continue
                w, g = _local(p), _local(p.grad)
                scale_of = amax[b, j].to(w.device) if recipe == "tensorwise" else None
                terms[b] += fisher_term(w, g, scale_of).to(device, torch.float64)
    gathered = [torch.zeros_like(terms) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, terms)
    per_rank = torch.stack(gathered).cpu().numpy()
    return np.array([math.fsum(per_rank[:, b]) for b in range(num_layers)])   # exact: no rank sums differently


class Fp8Schedule:
    """The float8 set of every step for the whole model, and the sensitivity state behind loss-aware draws.

    Every rank holds one (ranks without float8 blocks too: the probe is collective) and computes the same
    windows; ``set_step`` switches this rank's float8 Linears. ``probe_every`` > 0 measures the sensitivities
    after every that many steps' backward."""

    def __init__(self, *, stage_layers: list[int], counts: list[int], rotation_steps: int, temperature: float,
                 recipe: str, seed: int, linears: dict[int, list[tuple[int, nn.Module]]], width: int,
                 probe_every: int = 0) -> None:
        self.stage_layers, self.counts = list(stage_layers), list(counts)
        self.starts = [sum(stage_layers[:i]) for i in range(len(stage_layers))]
        self.num_layers = sum(stage_layers)
        self.rotation_steps, self.temperature, self.recipe, self.seed = rotation_steps, temperature, recipe, seed
        self.linears, self.width, self.probe_every = linears, width, probe_every
        self.ema = np.zeros(self.num_layers)
        self.probes = 0
        self._period: int | None = None          # the period whose draw used ``_basis``
        self._basis = np.zeros(self.num_layers)
        self._cache: tuple[int, list[int]] | None = None
        self._last_probe: tuple[int, dict] | None = None

    @classmethod
    def from_parts(cls, parts: list[tuple[int, nn.Module]], *, plan, num_layers: int, seed: int) -> "Fp8Schedule":
        """The schedule of ``plan`` over this rank's stage modules [(stage, module)] after apply_fp8; a Linear's
        slot is its place among its block's Linears (module order: the same in every block and on every rank)."""
        linears, width = {}, 0
        for _, part in parts:
            for key, block in part.layers.items():
                lins = [m for m in block.modules() if isinstance(m, nn.Linear)]
                width = max(width, len(lins))
                converted = [(j, m) for j, m in enumerate(lins) if hasattr(m, "float8_enabled")]
                if converted:
                    linears[int(key)] = converted
        return cls(stage_layers=plan.stage_layers(num_layers), counts=plan.per_stage("fp8_layers", num_layers),
                   rotation_steps=plan.fp8_rotation_steps, temperature=plan.fp8_temperature,
                   recipe=plan.fp8_recipe, seed=seed, linears=linears, width=width)

    def window(self, step: int) -> list[int]:
        """Global indices of the blocks in float8 at ``step``. Call in step order: a period's draw uses the
        sensitivities as they stood when its first step asked."""
        period = step // self.rotation_steps if self.rotation_steps > 0 else 0
        if self._cache is not None and self._cache[0] == period:
            return list(self._cache[1])
        if self.temperature > 0 and period != self._period:
            self._period, self._basis = period, self.ema.copy()
        out = []
        for stage, (start, total, n) in enumerate(zip(self.starts, self.stage_layers, self.counts)):
            if n <= 0:
                continue
            if self.rotation_steps <= 0:
                local = list(range(min(n, total)))
            elif self.temperature == 0:
                local = sliding_window(period, num_blocks=n, total=total)
            else:
                local = sample_blocks(self._basis[start:start + total], num_blocks=n, temperature=self.temperature,
                                      seed=self.seed, stage=stage, period=period)
            out += [start + i for i in local]
        self._cache = (period, out)
        return list(out)

    def set_step(self, step: int) -> list[int]:
        """Route each float8 Linear of this rank through float8 or not for ``step``; returns the window."""
        active = set(self.window(step))
        for b, lins in self.linears.items():
            for _, lin in lins:
                lin.float8_enabled = b in active
        return sorted(active)

    def after_backward(self, step: int, device: torch.device) -> None:
        """On every ``probe_every``-th step, measure the sensitivities (collective) and fold them into the EMA."""
        if self.probe_every <= 0 or (step + 1) % self.probe_every:
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        s = block_sensitivity(self.linears, num_layers=self.num_layers, width=self.width, recipe=self.recipe,
                              device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.ema = s if self.probes == 0 else EMA_DECAY * self.ema + (1 - EMA_DECAY) * s
        self.probes += 1
        self._last_probe = (step, {"fp8_sensitivity": self.ema.tolist(), "fp8_probe_s": time.perf_counter() - t0})

    def metrics(self, step: int) -> dict:
        """metrics.jsonl fields of ``step``: the float8 window, and the smoothed sensitivities and the probe's
        seconds on a probe step."""
        out = {"fp8_window": self.window(step)}
        if self._last_probe is not None and self._last_probe[0] == step:
            out.update(self._last_probe[1])
        return out

    def state_dict(self) -> dict:
        """JSON-able state for the checkpoint (floats round-trip exactly)."""
        return {"ema": self.ema.tolist(), "probes": self.probes, "probe_every": self.probe_every,
                "period": self._period, "basis": self._basis.tolist()}

    def load_state_dict(self, state: dict | None, *, keep_probe_every: bool = False) -> None:
        """Restore a saved state (None: a checkpoint without one). The saved probe interval is taken unless
        ``keep_probe_every`` (the user set one for this run)."""
        if not state:
            return
        if len(state["ema"]) != self.num_layers:
            warnings.warn(f"float8 schedule saved for {len(state['ema'])} blocks, the model has {self.num_layers}; "
                          "sensitivities start afresh", stacklevel=2)
            return
        self.ema, self.probes = np.array(state["ema"], dtype=np.float64), int(state["probes"])
        self._period, self._basis = state["period"], np.array(state["basis"], dtype=np.float64)
        self._cache = None
        if not keep_probe_every:
            self.probe_every = int(state["probe_every"])


def default_probe_every(plan, model, cluster) -> int:
    """Steps between probes when the run does not say: none unless the plan draws its float8 set (T > 0); else the
    cost model's probe time over 1 % of its step time on this cluster (costmodel.fp8.probe_every), or once per
    rotation period where no GPU profile is known (a CPU run)."""
    if plan.fp8_temperature <= 0 or plan.fp8_rotation_steps <= 0:
        return 0
    if cluster is None:
        return plan.fp8_rotation_steps
    from costmodel.fp8 import probe_every
    from costmodel.prediction import predict
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = predict(model, cluster, plan)
    except Exception as e:  # a cost-model failure must not stop training: fall back, and say so
        warnings.warn(f"no prediction to size the float8 probe interval ({type(e).__name__}: {e}); probing once "
                      f"per rotation period ({plan.fp8_rotation_steps} steps)", stacklevel=2)
        return plan.fp8_rotation_steps
    return probe_every(pred.fp8_probe_s, pred.step_time_s)

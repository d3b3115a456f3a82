"""Shrink plan entries to a tiny model for the GPU scripts' CPU smoke runs (their ``--cpu-smoke``).

Every plan keeps its layout (dp, tp, pp, schedule, zero, checkpointing mode, offloads, float8) so the same
launcher code paths run, but on benchmarks/gpu/models/tiny-smoke.yaml (8 blocks), 64-token sequences, one
sequence per micro-batch, at most 4 micro-batches, and without torch.compile (minutes on a CPU). Block counts
(checkpointed, offloaded, float8) are scaled from the real model's depth to the tiny one's.
"""
from __future__ import annotations

import math
from pathlib import Path

SMOKE_MODEL = "benchmarks/gpu/models/tiny-smoke.yaml"
SMOKE_LAYERS = 8
SMOKE_SEQ = 64


def _scale(k: int, layers: int, stage_layers: int) -> int:
    """A block count of a ``layers``-deep model mapped to the tiny model's stage (never 0 when it was not)."""
    if not k:
        return 0
    return min(stage_layers, max(1, round(k * SMOKE_LAYERS / layers)))


def smoke_plan(plan: dict, layers: int) -> dict:
    """The tiny-model version of one plan dict."""
    p = dict(plan)
    pp, v = p.get("pp", 1), p.get("virtual_stages", 1)
    stages = pp * v
    if SMOKE_LAYERS % stages:
        raise ValueError(f"{stages} stages do not divide the smoke model's {SMOKE_LAYERS} blocks")
    stage_layers = SMOKE_LAYERS // stages
    dp = p["dp"]
    micro = p["global_batch_size"] // (p["micro_batch_size"] * dp)
    micro = min(micro, 4)
    if pp > 1:
        micro = math.ceil(max(micro, pp) / pp) * pp
    p.update(seq_len=SMOKE_SEQ, micro_batch_size=1, global_batch_size=micro * dp, compile=False)
    p.pop("layers_per_stage", None)
    checkpointed = 0
    if p.get("recompute", "none") != "none":
        r = p.get("recompute_layers")
        checkpointed = stage_layers if r is None else _scale(r, layers, stage_layers)
        if r is not None:
            p["recompute_layers"] = checkpointed
    if p.get("offload_activation_layers"):
        p["offload_activation_layers"] = min(stage_layers - checkpointed,
                                             _scale(p["offload_activation_layers"], layers, stage_layers))
    for key in ("offload_state_layers", "fp8_layers"):
        if p.get(key):
            p[key] = _scale(p[key], layers, stage_layers)
    if p.get("fp8_rotation_steps"):
        p["fp8_rotation_steps"] = 1
    return p


def smoke_entries(entries: list[dict]) -> list[dict]:
    """Plan-file entries on the tiny model (the original model is kept as ``smoke_of``)."""
    from costmodel import load_model
    out = []
    for e in entries:
        layers = load_model(e["model"]).num_hidden_layers
        out.append({**e, "model": SMOKE_MODEL, "smoke_of": str(e["model"]), "plan": smoke_plan(e["plan"], layers)})
    return out


if __name__ == "__main__":  # print the smoke versions of a plan file
    import sys

    import yaml
    for path in sys.argv[1:]:
        print(yaml.safe_dump(smoke_entries(yaml.safe_load(Path(path).read_text())), sort_keys=False, width=200))

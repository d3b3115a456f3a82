"""What every exporter shares: the result type, per-stage views of a plan, and the torchrun line.

An exporter turns a checked plan into another engine's configuration. Whatever the target engine cannot
express is named in ``ExportResult.warnings`` (the CLI prints them, ``--json`` carries them): never dropped
silently. No torch import here: exporting runs on a laptop.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from costmodel.plan import KERNEL_KEYS, Plan
from costmodel.specs import ClusterSpec, ModelSpec

Target = Literal["torchtitan", "megatron", "deepspeed"]
TARGETS: tuple[str, ...] = ("torchtitan", "megatron", "deepspeed")


@dataclass(kw_only=True)
class ExportResult:
    """One plan rendered for one engine."""

    target: str
    """torchtitan, megatron or deepspeed."""
    files: dict[str, str]
    """File name -> content, written into the output folder."""
    command: str
    """How to launch it (a shell line; placeholders in <angle brackets>)."""
    warnings: list[str] = field(default_factory=list)
    """Plan knobs the engine cannot express, and how the export approximates each."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write every file (and a launch.sh with the command) into ``out_dir``; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in {**self.files, "launch.sh": f"#!/usr/bin/env bash\n{self.command}\n"}.items():
            p = out / name
            p.write_text(text)
            paths.append(p)
        return paths


@dataclass(frozen=True)
class StageView:
    """A plan's per-stage knobs resolved against a model: one int per pipeline stage (virtual stages too)."""

    layers: list[int]
    recompute: list[int]
    offload_activation: list[int]
    offload_state: list[int]
    fp8: list[int]

    @property
    def first_block(self) -> list[int]:
        """Global index of each stage's first transformer block."""
        starts, acc = [], 0
        for n in self.layers:
            starts.append(acc)
            acc += n
        return starts

    def fp8_blocks(self) -> list[int]:
        """Global indices of the blocks whose Linears run in float8 (the first fp8 blocks of each stage)."""
        return [s + i for s, k in zip(self.first_block, self.fp8) for i in range(k)]


def stage_view(plan: Plan, model: ModelSpec) -> StageView:
    L = model.num_hidden_layers
    return StageView(layers=plan.stage_layers(L), recompute=plan.per_stage("recompute_layers", L),
                     offload_activation=plan.per_stage("offload_activation_layers", L),
                     offload_state=plan.per_stage("offload_state_layers", L), fp8=plan.per_stage("fp8_layers", L))


def offloaded_param_fraction(view: StageView, model: ModelSpec) -> float:
    """Share of all weights whose optimizer state the plan keeps on the CPU (blocks only; embeddings stay)."""
    offloaded = sum(view.offload_state) * model.params_per_block()
    return offloaded / model.num_params()


def common_warnings(plan: Plan, view: StageView, engine: str) -> list[str]:
    """Warnings for knobs no exported engine expresses the way loadmaster executes them."""
    out = []
    if plan.moe_imbalance is not None:
        out.append(f"moe_imbalance {plan.moe_imbalance}: a cost-model assumption (the busiest EP rank's share of "
                   f"routed tokens), not an {engine} setting; dropped")
    if plan.fp8_rotation_steps > 0 and any(view.fp8):
        out.append(f"fp8_rotation_steps {plan.fp8_rotation_steps}: {engine} has no rotating float8 window; "
                   f"the export keeps a fixed set of float8 blocks")
    if plan.tp > 1 and not plan.vocab_parallel:
        out.append(f"vocab_parallel false: {engine} shards the embedding and the output projection over tensor "
                   "parallelism regardless; only loadmaster's trainer keeps them whole on every rank")
    if plan.optimizer_impl == "foreach":
        out.append(f"optimizer_impl foreach: {engine} runs its own (fused) AdamW; the exported run uses it")
    if plan.pp > 1 and plan.zero == 3 and plan.pp_reshard_after_forward and engine != "TorchTitan":
        out.append(f"pp_reshard_after_forward: {engine} keeps pipeline stages' parameters as its ZeRO level says")
    # kernel choices are loadmaster's (launcher.runtime.kernels); TorchTitan compiles its loss with its blocks
    compiled_loss_kept = engine == "TorchTitan" and plan.compile
    for key in KERNEL_KEYS:
        value = getattr(plan, key)
        if value not in ("eager", "eager_transposed") and not (value == "compiled" and compiled_loss_kept):
            out.append(f"{key} {value}: a loadmaster kernel choice; {engine} runs its own kernels there, so its "
                       "step time and memory differ from the prediction")
    return out


def per_stage_text(values: list[int]) -> str:
    return "/".join(map(str, values))


def torchrun_line(world_size: int, cluster: ClusterSpec | None, module_args: str) -> str:
    """A torchrun command for the plan's world size: one node per cluster node, c10d rendezvous past one."""
    if cluster is not None:
        nodes, per_node = cluster.nodes, cluster.gpus_per_node
    else:
        per_node = min(world_size, 8)
        nodes = max(1, world_size // per_node)
    rdzv = "" if nodes == 1 else " --rdzv-backend c10d --rdzv-endpoint <HOST:PORT> --rdzv-id <JOB_ID>"
    return f"torchrun --nnodes {nodes} --nproc-per-node {per_node}{rdzv} {module_args}"


def dumps_json(obj: dict) -> str:
    return json.dumps(obj, indent=2) + "\n"


def export_plan(plan: Plan, model: ModelSpec, cluster: ClusterSpec | None, target: str) -> ExportResult:
    """Render a checked plan for one engine (``TARGETS``)."""
    if target == "torchtitan":
        from launcher.export.torchtitan import export_torchtitan as fn
    elif target == "megatron":
        from launcher.export.megatron import export_megatron as fn
    elif target == "deepspeed":
        from launcher.export.deepspeed import export_deepspeed as fn
    else:
        raise ValueError(f"--to {target!r} is not an export target; use one of {', '.join(TARGETS)}")
    return fn(plan, model, cluster)

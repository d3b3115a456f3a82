"""Context parallelism in the trainer.

On CPU (gloo, fp32) PyTorch's ``context_parallel`` cannot run (its DTensor dispatch has rules for CUDA attention
ops only), so the trainer's context-parallel path — buffers sharded with causal load balancing, RoPE tables
following the tokens, FSDP over dp × cp, the loss averaged over cp, composed with TP and PP — is checked here
with PyTorch's own ring functions called directly (launcher.gputools.cp_ring) against the single-process reference
of trainer_harness. The same plan through ``context_parallel`` itself needs 2 GPUs (``gpus(2)`` below; the
multi-GPU issue runs it) and one GPU rehearses a cp rank under the fake backend."""
from __future__ import annotations

import functools
import warnings

import pytest
from trainer_harness import TINY, assert_close, config, plan_of, reference, spawn

from costmodel import ClusterSpec, ModelSpec, SpecError
from launcher.runtime.config import validate


CLUSTER4 = ClusterSpec(nodes=1, gpus_per_node=4, gpu="h100-sxm", name="4xh100")


@functools.lru_cache(maxsize=None)
def ref():
    return reference(plan_of())


def run_with_ring(rank: int, cfg) -> dict:
    """The trainer on this rank with the ring called directly in place of context_parallel (CPU)."""
    import launcher.runtime.trainer as trainer
    from launcher.gputools.cp_ring import ring_cp
    from launcher.runtime.parallel import cp
    cp.cp_unavailable = lambda: None
    trainer.apply_cp = ring_cp
    return trainer.run(cfg)


@pytest.mark.parametrize("kw", [dict(cp=2), dict(cp=2, tp=2), dict(cp=2, pp=2, micro_batch_size=1),
                                dict(cp=2, dp=2, cp_rotate="alltoall")],
                         ids=["cp2", "cp2-tp2-sp", "cp2-pp2", "cp2-dp2-ring"])
def test_context_parallel_matches_the_single_process_reference(kw):
    plan = plan_of(**kw)
    out = spawn(run_with_ring, plan.world_size, config(plan))
    losses, norms = ref()
    for rank_summary in out:   # every rank reports the global loss (a mean over the cp ranks' shares)
        assert_close(rank_summary["losses"], losses, what=f"{kw} loss")
        assert_close(rank_summary["grad_norms"], norms, what=f"{kw} grad norm")


def test_context_parallel_with_expert_parallel_moe_matches_the_reference():
    """cp 2 × ep 2 (dp 2) on the tiny MoE: each cp rank routes its share of the tokens within its EP group, the
    experts are FSDP-sharded over (dp / ep) × cp ranks. The balance loss is off: it is taken over each rank's own
    tokens, which cp regroups (a different loss, not an error)."""
    from trainer_harness import TINY_MOE
    model = ModelSpec(**{**TINY_MOE.__dict__, "router_aux_loss_coef": 0.0, "name": "tiny-moe-noaux"})
    plan = plan_of(cp=2, dp=2, ep=2)
    out = spawn(run_with_ring, plan.world_size, config(plan, model=model))
    losses, norms = reference(plan_of(), model=model)
    for rank_summary in out:
        assert_close(rank_summary["losses"], losses, what="cp2 ep2 loss")
        assert_close(rank_summary["grad_norms"], norms, what="cp2 ep2 grad norm")


def test_cp_on_a_machine_without_a_gpu_is_a_one_line_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SpecError) as e:
        validate(config(plan_of(cp=2)), 2)
    msg = str(e.value)
    assert "\n" not in msg and "cp: 2 on a machine without a GPU" in msg and "use cp: 1" in msg


def test_with_expert_parallelism_the_mesh_is_pp_efsdp_cp_ep_tp():
    """Rank 13 of dp 4 (ep 2) × cp 2 × tp 2: EP keeps consecutive data ranks (stride tp), cp ranks are ep·tp apart,
    FSDP spans dp × cp, the experts' FSDP group the (dp / ep) × cp ranks holding the same experts."""
    import torch.distributed as dist

    from launcher.gputools.replay import fake_process_group
    from launcher.runtime.parallel.mesh import build_meshes
    plan = plan_of(dp=4, ep=2, cp=2, tp=2, global_batch_size=4, micro_batch_size=1)
    with fake_process_group(13, plan.world_size):
        m = build_meshes(plan, "cpu")
        groups = {name: dist.get_process_group_ranks(mesh.get_group()) for name, mesh in
                  (("ep", m.ep_mesh), ("cp", m.cp_mesh), ("fsdp", m.fsdp_mesh), ("experts", m.expert_fsdp_mesh),
                   ("dp", m.dp_mesh))}
    assert groups == {"ep": [13, 15], "cp": [9, 13], "fsdp": [1, 3, 5, 7, 9, 11, 13, 15],
                      "experts": [1, 5, 9, 13], "dp": [5, 7, 13, 15]}


def test_mesh_groups_follow_the_layout_pp_dp_cp_tp():
    """Under the fake backend, rank 13 of dp 2 × cp 4 × tp 2: its cp group is the 4 ranks tp apart, FSDP's the
    dp × cp = 8 ranks tp apart, its TP group the 2 neighbours."""
    import torch.distributed as dist

    from launcher.gputools.replay import fake_process_group
    from launcher.runtime.parallel.mesh import build_meshes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_of(dp=2, cp=4, tp=2, global_batch_size=4, micro_batch_size=1)
    with fake_process_group(13, plan.world_size):
        m = build_meshes(plan, "cpu")
        groups = {name: dist.get_process_group_ranks(mesh.get_group())
                  for name, mesh in (("cp", m.cp_mesh), ("fsdp", m.fsdp_mesh), ("tp", m.tp_mesh))}
        assert (m.dp_rank, m.cp_rank, m.tp_rank) == (1, 2, 1)
    assert groups == {"cp": [9, 11, 13, 15], "fsdp": [1, 3, 5, 7, 9, 11, 13, 15], "tp": [12, 13]}


def test_tokens_labels_and_every_stage_rope_table_are_sharded_together():
    """cp rank 2 of 4 keeps chunks 2 and 5 of 8 (causal load balancing) of the tokens, the labels and each stage's
    RoPE tables (the losses above barely depend on positions at init, so this is checked directly); the tables are
    restored after the step, the tokens stay sharded."""
    import torch

    from launcher.gputools.cp_ring import ring_cp
    from launcher.gputools.replay import fake_process_group
    from launcher.runtime.model import Transformer
    from launcher.runtime.parallel.mesh import build_meshes
    plan = plan_of(cp=4, global_batch_size=2, micro_batch_size=1)
    parts = []
    for _ in range(2):   # two pipeline stages' modules
        with torch.device("meta"):
            part = Transformer(TINY, plan.seq_len)
        part.to_empty(device="cpu")
        part.init_weights(seed=0)
        parts.append(part)
    full_cos, full_sin = parts[0].rope_cos.clone(), parts[0].rope_sin.clone()
    tokens = torch.arange(32).repeat(2, 1)
    labels = tokens + 100
    mine = list(range(8, 12)) + list(range(20, 24))
    with fake_process_group(2, plan.world_size):
        mesh = build_meshes(plan, "cpu").cp_mesh
        with ring_cp(parts, mesh, tokens=tokens, labels=labels):
            assert tokens.tolist() == [mine, mine] and labels.tolist() == [[p + 100 for p in mine]] * 2
            for part in parts:
                assert torch.equal(part.rope_cos, full_cos[mine]) and torch.equal(part.rope_sin, full_sin[mine])
    assert all(torch.equal(p.rope_cos, full_cos) for p in parts) and tokens.shape == (2, 8)


def test_a_cp_rank_rehearses_on_the_cpu_with_the_ring_called_directly():
    """The rehearsal fallback: rank 3 (cp rank 1 of 2) of a 4-GPU plan trains alone under fake collectives."""
    from launcher.gputools.rehearse import rehearse
    res = rehearse(TINY, CLUSTER4, plan_of(dp=2, cp=2, global_batch_size=4, micro_batch_size=1), ranks=[3], steps=1,
                   warmup_steps=0, cp_attention="ring")
    assert res.ranks[0].rank == 3 and res.ranks[0].step_time_s > 0 and "ring" in res.notes[0]


def test_rehearsing_a_cp_rank_through_context_parallel_on_a_cpu_is_a_one_line_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from launcher.gputools.rehearse import rehearse
    with pytest.raises(SpecError, match="cp: 2 on a machine without a GPU.*rehearse on a GPU node"):
        rehearse(TINY, CLUSTER4, plan_of(dp=2, cp=2, global_batch_size=4, micro_batch_size=1), ranks=[3])


def test_the_gpu_script_runs_its_code_path_on_the_cpu(tmp_path):
    """benchmarks/gpu/cp_roles.py --cpu-smoke: both parts on tiny shapes (ring stand-in), lines written."""
    import json

    from benchmarks.gpu import cp_roles
    assert cp_roles.main(["--out", str(tmp_path), "--cpu-smoke", "--only", "8b-dp4-cp2-s32k-ring"]) == 0
    attention = [json.loads(x) for x in (tmp_path / "cp_attention.jsonl").read_text().splitlines()]
    roles = [json.loads(x) for x in (tmp_path / "cp_roles.jsonl").read_text().splitlines()]
    assert len(attention) == 6 and {x["path"] for x in attention} == {"ring"}
    assert [x["rank"] for x in roles] == [0, 1] and all(x["step_time_s"] > 0 for x in roles)


# ---- on GPUs: PyTorch's context_parallel itself -------------------------------------------------------------

def _bf16_gpu_run(plan) -> list[dict]:
    from trainer_harness import run_plan
    return spawn(run_plan, plan.world_size, config(plan, param_dtype="bfloat16"), timeout_s=300,
                 backend="cpu:gloo,cuda:nccl")


@pytest.mark.gpu
@pytest.mark.gpus(2)
@pytest.mark.parametrize("rotate", ["allgather", "alltoall"])
def test_context_parallel_on_two_gpus_matches_one_gpu(rotate):
    """cp = 2 through torch's context_parallel (cuDNN/flash ring attention, bf16) against the same plan on one GPU
    with cp = 1: the losses agree to bf16 noise over 5 steps."""
    base = dict(seq_len=256, global_batch_size=4, micro_batch_size=1)
    one = _bf16_gpu_run(plan_of(**base))[0]
    two = _bf16_gpu_run(plan_of(**base, cp=2, cp_rotate=rotate))
    for rank_summary in two:
        assert_close(rank_summary["losses"], one["losses"], rtol=2e-2, what=f"cp2 {rotate} loss")
        assert_close(rank_summary["grad_norms"], one["grad_norms"], rtol=1e-1, what=f"cp2 {rotate} grad norm")


@pytest.mark.gpu
def test_a_cp_rank_rehearses_on_one_gpu_through_context_parallel():
    """One GPU, fake backend: both ends of an 8-way cp group of a 16-GPU plan run torch's context_parallel (the
    ring's all-gather and all-to-all are fake-backend copies of the right size) and report time and memory."""
    from launcher.gputools.rehearse import rehearse
    plan = plan_of(dp=2, cp=8, seq_len=1024, global_batch_size=2, micro_batch_size=1)
    cluster = ClusterSpec(nodes=2, gpus_per_node=8, gpu="h100-sxm", name="2x8xh100")
    res = rehearse(TINY, cluster, plan, ranks=[0, 7], steps=2, warmup_steps=1)
    assert [r.rank for r in res.ranks] == [0, 7]
    assert all(r.step_time_s > 0 and r.peak_memory_bytes > 0 for r in res.ranks)

"""Context parallelism (plan key ``cp``) outside the trainer: the plan rules, the cost model, the tuner, explain,
the notebook API, the exporters and the published runs that use it."""
from __future__ import annotations

import json
import warnings

import pytest
import sympy as sp
import yaml

from costmodel import SpecError, check_plan, load_cluster, load_model, parse_plan
from costmodel.prediction import predict
from costmodel.memory import cp_buffer_bytes
from costmodel.symbols import K, smin
from costmodel.timing import attention_flops_fwd

warnings.filterwarnings("ignore", message=".*max_position_embeddings.*")
BASE = dict(global_batch_size=8, micro_batch_size=1, seq_len=131072, dp=8, tp=1, pp=1, zero=3, recompute="full")


def plan(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse_plan({**BASE, **kw})


# ---- the plan ------------------------------------------------------------------------------------------------

def test_world_size_is_dp_cp_tp_pp_and_cp_defaults_to_one():
    p = plan(dp=2, cp=4)
    assert p.world_size == 8 and plan().cp == 1 and "cp" not in plan().to_dict()
    assert p.to_dict()["cp"] == 4 and parse_plan(p.to_dict()) == p


@pytest.mark.parametrize("kw, key, fix", [
    (dict(cp=3, dp=1), "cp", "use cp in [2, 4, 8, 16, 32, 64]"),                       # 131072 is not a multiple of 6
    (dict(cp=2, dp=4, seq_len=4098), "cp", "use cp in []"),
    (dict(cp=2, dp=4, zero=0), "zero", "use zero: 2 or 3 with cp > 1"),
])
def test_plan_rules_name_the_key_and_the_fix_in_one_line(kw, key, fix):
    with pytest.raises(SpecError) as e:
        plan(**kw)
    assert e.value.key == key and "\n" not in str(e.value)
    assert (fix in str(e.value)) if "[]" not in fix else "multiple of 4" in str(e.value)


def test_sequence_parallel_needs_each_cp_share_to_split_over_tp():
    m = load_model("llama3-8b")
    check_plan(plan(cp=4, tp=2, dp=1, seq_len=131072), m)
    with pytest.raises(SpecError, match=r"seq_len: seq_len / cp = 12 is not a multiple of tp 8"):
        check_plan(plan(cp=2, tp=8, dp=1, seq_len=24, global_batch_size=1), m)
    check_plan(plan(cp=2, tp=8, dp=1, seq_len=24, global_batch_size=1, sequence_parallel=False), m)


def test_a_plan_that_does_not_fill_the_cluster_spells_out_dp_cp_tp_pp():
    with pytest.raises(SpecError, match=r"dp × cp × tp × pp = 2 × 2 × 1 × 1 = 4 but cluster 8xh100 has 8 GPUs"):
        check_plan(plan(dp=2, cp=2), load_model("llama3-8b"), load_cluster("8xh100"))


def test_cp_that_does_not_divide_the_sequence_is_exit_2_and_one_line(run_cli, tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**BASE, "dp": 1, "cp": 3}))
    code, out, err = run_cli("predict", "llama3-8b", "--cluster", "8xh100", "--plan", str(path))
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1
    assert "cp: 3 does not cut seq_len 131072 into 2 × cp = 6 equal chunks" in lines[0] and "use cp in" in lines[0]


# ---- the cost model ------------------------------------------------------------------------------------------

def test_attention_flops_are_split_evenly_over_cp_ranks():
    whole = attention_flops_fwd().subs({K.c: 1})
    for c in (2, 8):
        assert sp.simplify(attention_flops_fwd().subs({K.c: c}) * c - whole) == 0


def test_per_token_memory_divides_by_cp_and_model_state_shards_over_dp_cp():
    one, eight = (predict("llama3-8b", "8xh100", p).memory_breakdown for p in (plan(), plan(dp=1, cp=8)))
    assert eight["activations"] == pytest.approx(one["activations"] / 8)
    assert eight["logits"] < one["logits"] / 7.5        # one micro-batch's logits: 1/8 of the tokens each
    for k in ("master_params", "optimizer_state"):      # sharded over dp × cp = 8 either way
        assert eight[k] == pytest.approx(one[k])
    # the exchange's buffers exist only with cp (at the forward and backward peaks; these plans peak in the loss)
    for phase in ("forward", "backward"):
        buf = cp_buffer_bytes(phase).replace(smin, sp.Min)
        assert buf.subs({K.c: 1}) == 0 and sp.simplify(buf.subs({K.c: 8, K.cag: 1})) != 0


def test_the_kv_exchange_is_exposed_only_where_attention_is_shorter():
    def cp_comm(seq, cluster="2x8xh100"):
        p = plan(seq_len=seq, dp=1, cp=16, global_batch_size=1)
        full, alone = predict("llama3-8b", cluster, p), predict("llama3-8b", cluster, p, comm=False)
        return full.time_breakdown["cp_comm"] / full.step_time_s, alone.time_breakdown["cp_comm"]
    short, zero = cp_comm(8192)
    long, _ = cp_comm(131072)
    assert zero == pytest.approx(0, abs=1e-12)   # compute-only (the rehearsal's view): no exchange
    assert short > 0.1 > 0.05 > long    # short chunks leave the cross-node exchange exposed, long ones hide it


def test_ring_and_all_gather_rotations_are_priced_apart():
    ag = predict("llama3-8b", "2x8xh100", plan(seq_len=16384, dp=1, cp=16, global_batch_size=1))
    ring = predict("llama3-8b", "2x8xh100", plan(seq_len=16384, dp=1, cp=16, global_batch_size=1,
                                                 cp_rotate="alltoall"))
    assert ag.time_breakdown["cp_comm"] != pytest.approx(ring.time_breakdown["cp_comm"], rel=1e-3)
    # the all-gather holds every cp rank's K/V of a block at once; the ring three blocks
    assert ag.memory_breakdown.get("cp_buffers", 0) >= ring.memory_breakdown.get("cp_buffers", 0)


# ---- planner: tuner, explain, notebook API ---------------------------------------------------------------------

def test_a_128k_llama3_8b_job_is_planned_with_context_parallelism_quickly():
    from planner.tuner import tune
    res = tune("llama3-8b", "8xh100", 8, 131072, top_k=3, time_limit_s=60)
    assert res.best is not None and res.best.plan.cp > 1 and res.seconds < 20
    from planner.explain import alternatives, cp_note
    m, c = load_model("llama3-8b"), load_cluster("8xh100")
    note = cp_note(res.best.plan, res.best.prediction, alternatives(m, c, res.best.plan, res.best.prediction))
    assert note.startswith(f"context parallel {res.best.plan.cp}: each GPU holds") and "cp=" in note


def test_short_sequences_search_no_context_parallelism_and_pins_are_kept():
    from planner.space import SearchSpace, cp_degrees, layouts
    m, c = load_model("llama3-8b"), load_cluster("8xh100")
    assert cp_degrees(m, c, SearchSpace(), 4096) == [1]
    assert cp_degrees(m, c, SearchSpace(), 131072) == [1, 2, 4, 8]
    assert {lay.cp for lay in layouts(m, c, SearchSpace(cp=4), 131072)} == {4}
    assert all(lay.dp * lay.cp * lay.tp * lay.pp == 8 for lay in layouts(m, c, SearchSpace(), 131072))


def test_sweep_covers_cp_filling_the_cluster_with_dp():
    import planner
    sw = planner.sweep("llama3-8b", "8xh100", BASE, cp=[1, 2, 4, 8])
    assert [(e.plan.cp, e.plan.dp) for e in sw] == [(1, 8), (2, 4), (4, 2), (8, 1)]
    frame_like = [e.row() for e in sw]
    assert [r["cp"] for r in frame_like] == [1, 2, 4, 8] and sw.rows[3].layout == "cp8·tp1·pp1·dp1"


def test_explain_cli_says_why_context_parallel(run_cli, tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**BASE, "dp": 1, "cp": 8}))
    code, out, err = run_cli("explain", "llama3-8b", "--cluster", "8xh100", "--plan", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["context_parallel"].startswith("context parallel 8: each GPU holds 16384 of every")


# ---- exports ---------------------------------------------------------------------------------------------------

def test_exports_carry_cp_or_warn_naming_the_knob():
    from launcher.export.common import export_plan
    p, m, c = plan(dp=2, cp=4, cp_rotate="alltoall"), load_model("llama3-8b"), load_cluster("8xh100")
    tt = export_plan(p, m, c, "torchtitan")
    text = next(iter(tt.files.values()))
    assert "context_parallel_degree=4" in text and "rotate_method" not in text   # TorchTitan 0.3 has none
    assert any(w.startswith("cp_rotate alltoall: TorchTitan 0.3") for w in tt.warnings)
    mg = export_plan(p, m, c, "megatron")
    assert "--context-parallel-size 4" in next(iter(mg.files.values())) and "--cp-comm-type p2p" in \
        next(iter(mg.files.values()))
    ds = export_plan(p, m, c, "deepspeed")
    cfg = json.loads(ds.files["ds_config.json"])
    (warn,) = [w for w in ds.warnings if w.startswith("cp 4")]
    assert "Ulysses" in warn and "sequence_parallel_size" in warn
    # DeepSpeed sees dp × cp = 8 data-parallel ranks: its batch arithmetic must still close
    assert cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * 8 == cfg["train_batch_size"]


# ---- published runs ---------------------------------------------------------------------------------------------

def test_published_context_parallel_runs_are_exact_plans_and_scored():
    from benchmarks import fidelity
    data = {e["name"]: e for e in yaml.safe_load(open(fidelity.PUBLISHED))}
    assert not any("cp" in e.get("unsupported", []) for e in data.values())
    cp_rows = [e for e in data.values() if e["plan"].get("cp", 1) > 1]
    assert len(cp_rows) == 10 and sorted(e["split"] for e in cp_rows) == ["fit"] * 6 + ["holdout"] * 4
    for e in cp_rows:   # replayed as the exact plans they are (the published summary scores rows without
        pred, _ = fidelity.replay(e)   # `unsupported`)
        assert pred.time_breakdown["cp_comm"] > 0 and pred.tokens_per_s_per_gpu > 0
    assert data["llama3-405b-16384xh100-tp8-cp16-pp16-dp8-s128k"]["plan"]["seq_len"] == 131072

"""`loadmaster rehearse`: one rank of a big plan run alone under fake collectives (on CPU: tiny models only)."""
import json
import warnings

import pytest

from costmodel import ClusterSpec, ModelSpec, SpecError, parse_plan
from costmodel.prediction import predict
from launcher.gputools.rehearse import pipeline_rank_of, rehearse, roles

TINY = ModelSpec(name="tiny", hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256)
CLUSTER = ClusterSpec(nodes=8, gpus_per_node=8, gpu="h100-sxm", name="8x8xh100")   # a 64-GPU plan


def _plan(**kw):
    base = dict(global_batch_size=32, micro_batch_size=1, seq_len=32, dp=8, tp=2, pp=4, zero=2, recompute="full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse_plan({**base, **kw})


def test_a_rank_of_a_64_gpu_plan_trains_alone_on_the_cpu_beside_its_prediction():
    plan = _plan(pp=1, dp=32, zero=3)
    res = rehearse(TINY, CLUSTER, plan, ranks=[37], steps=2, warmup_steps=1)
    (r,) = res.ranks
    assert r.rank == 37 and r.pp_rank == 0 and len(r.step_times_s) == 2 and all(t > 0 for t in r.step_times_s)
    alone = predict(TINY, CLUSTER, plan, comm=False)
    assert r.predicted_compute_s == pytest.approx(alone.step_time_s)
    # the plan's rehearsed step: the measured compute plus what the model adds for communication
    full = predict(TINY, CLUSTER, plan)
    assert r.rehearsed_step_s == pytest.approx(full.step_time_s - alone.step_time_s + r.step_time_s)


def test_interleaved_pipeline_ranks_run_their_stages_in_schedule_order():
    plan = _plan(pp_schedule="Interleaved1F1B", virtual_stages=2, recompute="none")
    res = rehearse(TINY, CLUSTER, plan, ranks=[0, 48], steps=1, warmup_steps=0)
    assert [r.pp_rank for r in res.ranks] == [0, 3]
    assert [r.stages for r in res.ranks] == [[0, 4], [3, 7]]


def test_roles_are_first_last_most_loaded_middle_and_each_distinct_stage():
    plan = _plan(offload_state_layers=[0, 1, 0, 0])
    peaks = [p["peak_memory_bytes"] for p in predict(TINY, CLUSTER, plan, comm=False).ranks]
    per_pp = plan.world_size // plan.pp
    got = roles(plan, TINY, peaks)
    middle = max((1, 2), key=lambda r: peaks[r])
    assert got == sorted({0, 3 * per_pp, middle * per_pp, 1 * per_pp})
    assert [pipeline_rank_of(plan, r) for r in got] == sorted({0, 3, middle, 1})


def test_compute_only_prediction_prices_no_communication():
    plan = _plan(pp=2, dp=16)
    full, alone = predict(TINY, CLUSTER, plan), predict(TINY, CLUSTER, plan, comm=False)
    for term in ("tp_comm", "pp_comm"):
        assert alone.time_breakdown[term] == pytest.approx(0, abs=1e-12) and full.time_breakdown[term] > 1e-6
    assert alone.step_time_s < full.step_time_s
    assert alone.peak_memory_bytes == full.peak_memory_bytes


def test_bad_ranks_and_big_ranks_on_a_cpu_are_one_line_errors():
    plan = _plan()
    with pytest.raises(SpecError, match="64 is not a rank of this plan's 64 GPUs; use 0 to 63"):
        rehearse(TINY, CLUSTER, plan, ranks=[64])
    big = parse_plan(dict(global_batch_size=8, micro_batch_size=1, seq_len=4096, dp=8, tp=1, pp=1, zero=3,
                          recompute="none"))
    with pytest.raises(SpecError, match="no CUDA GPU"):
        rehearse("llama3-8b", "8xh100", big, ranks=[0])


def test_cli_prints_json_and_refuses_a_bad_rank_in_one_line(run_cli, tmp_path):
    model = tmp_path / "tiny.yaml"
    model.write_text(json.dumps({k: v for k, v in TINY.__dict__.items() if v is not None}))
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps(dict(global_batch_size=4, micro_batch_size=1, seq_len=32, dp=2, tp=2, pp=1,
                                    zero=2, recompute="none")))
    code, out, err = run_cli("rehearse", str(model), "--cluster", "4xh200", "--plan", str(plan), "--rank", "3",
                             "--steps", "1", "--warmup-steps", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["ranks"][0]["rank"] == 3
    code, out, err = run_cli("rehearse", str(model), "--cluster", "4xh200", "--plan", str(plan), "--rank", "9")
    assert code == 2 and "9 is not a rank" in err and "Traceback" not in err


def test_a_rank_the_local_gpu_cannot_hold_is_refused_before_anything_runs(monkeypatch):
    import torch

    from costmodel import load_profile
    from launcher.gputools import rehearse as rh
    l4 = load_profile("l4")   # 22 GiB: a 70B tensor-parallel rank of 5 GiB fits, an 8B FSDP rank of 55 does not
    monkeypatch.setattr(rh, "_local_device", lambda cluster: (torch.device("cuda", 0), l4))
    monkeypatch.setattr(rh, "run_isolated", lambda *a, **k: pytest.fail("nothing may run"), raising=False)
    plan = parse_plan(dict(global_batch_size=64, micro_batch_size=1, seq_len=8192, dp=64, tp=1, pp=1, zero=3,
                           recompute="none"))
    with pytest.raises(SpecError, match="this l4 holds 22 GiB"):
        rehearse("llama3-8b", "8x8xh100", plan, ranks=[0])


def test_plan_rehearse_reranks_by_rehearsed_step_and_drops_plans_that_cannot_run(monkeypatch):
    import types

    import torch

    from launcher.gputools import rehearse as rh
    from planner.cli_rehearse import rerank_rehearsed
    from planner.tuner import Candidate, TuneResult
    plans = [_plan(zero=z) for z in (2, 3)] + [_plan(zero=0)]
    cands = [Candidate(plan=p, prediction=predict(TINY, CLUSTER, p), gap=0.0, status="optimal") for p in plans]
    result = TuneResult(best=cands[0], top=cands, seconds=0.0, groups=1, groups_searched=1, cases_solved=3)
    rehearsed = {2: [0.9, 1.0], 3: [0.5, 0.7]}    # slowest rank decides: zero 3 (0.7 s) beats zero 2 (1.0 s)

    def fake(model, cluster, plan, **kw):
        if plan.zero not in rehearsed:
            raise SpecError("<plan>", "rank 0", "needs 90 GiB", "pick another plan")
        return types.SimpleNamespace(ranks=[types.SimpleNamespace(rehearsed_step_s=t) for t in rehearsed[plan.zero]])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(rh, "rehearse", fake)
    with pytest.warns(UserWarning, match="a plan was dropped"):
        new = rerank_rehearsed(result, TINY, CLUSTER)
    assert [c.plan.zero for c in new.top] == [3, 2]
    assert new.best.plan.zero == 3


def test_plan_rehearse_without_a_gpu_warns_and_keeps_the_ranking(run_cli, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="--rehearse skipped"):
        code, out, err = run_cli("plan", "llama3.2-1b", "--cluster", "2xh200", "-b", "8", "-s", "2048", "--tp", "1",
                                 "--pp", "1", "--zero", "2", "--no-offload", "--no-compile", "--top-k", "1",
                                 "--rehearse", "--json")
    assert code == 0, err
    assert json.loads(out)["best"]["plan"]["zero"] == 2

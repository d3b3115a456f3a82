"""`loadmaster verify`: FSDPMemTracker under FakeTensorMode per pipeline rank (traced on the CPU through the
tests-only ``allow_cpu`` switch: the numbers differ from CUDA's, the code path is the same)."""
import json
from pathlib import Path

import pytest
import torch

from costmodel import ClusterSpec, ModelSpec, parse_plan
from launcher.gputools.replay import schedule_order
from launcher.gputools.verify import VerifyUnavailable, cuda_build, verify

TINY = ModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128, name="tiny")
cpu_only = pytest.mark.skipif(cuda_build(), reason="checks the refusal on a CPU-only torch build")


def _plan(**changes):
    base = {"global_batch_size": 4, "micro_batch_size": 1, "seq_len": 16, "dp": 2, "tp": 1, "pp": 1, "zero": 2,
            "recompute": "none"}
    return parse_plan({**base, **changes})


def _trace(**changes):
    plan = _plan(**changes)
    cluster = ClusterSpec(nodes=1, gpus_per_node=plan.world_size, gpu="h200", name=f"{plan.world_size}xh200")
    return verify(TINY, cluster, plan, allow_cpu=True)


@pytest.fixture(scope="module")
def zero2():
    return _trace()


def test_peak_holds_at_least_the_fp32_state(zero2):
    # fp32 master weights, gradients and AdamW's two moments are all alive at the optimizer step
    state_bytes = 16 * TINY.num_params() / 2
    assert len(zero2.stages) == 1
    assert zero2.peak_bytes > state_bytes
    assert zero2.stages[0].breakdown["OptState"] == pytest.approx(8 * TINY.num_params() / 2, rel=0.02)


def test_prediction_is_reported_beside_the_trace(zero2):
    from costmodel.prediction import predict
    cluster = ClusterSpec(nodes=1, gpus_per_node=2, gpu="h200")
    assert zero2.predicted_bytes == predict(TINY, cluster, _plan()).peak_memory_bytes
    assert zero2.to_dict()["error"] == pytest.approx(zero2.predicted_bytes / zero2.peak_bytes - 1)


@pytest.fixture(scope="module")
def zero3():
    return _trace(zero=3)


def test_zero3_traces_less_than_zero2(zero2, zero3):
    assert zero3.peak_bytes < zero2.peak_bytes


def test_full_recompute_traces_less_than_none(zero2):
    assert _trace(recompute="full").peak_bytes < zero2.peak_bytes


def test_pipeline_traces_every_stage_and_gpipe_holds_more_than_1f1b():
    one_f_one_b = _trace(pp=2, dp=1)
    gpipe = _trace(pp=2, dp=1, pp_schedule="GPipe")
    assert [s.stage for s in one_f_one_b.stages] == [0, 1]
    assert [s.rank for s in one_f_one_b.stages] == [0, 1]
    # stage 0 keeps 2 micro-batches in flight under 1F1B, all 4 under GPipe
    assert gpipe.stages[0].peak_bytes > one_f_one_b.stages[0].peak_bytes


@pytest.mark.parametrize("schedule,stages,stage,mbs,v", [
    ("1F1B", 4, 0, 8, 1), ("1F1B", 4, 3, 8, 1), ("1F1B", 4, 1, 2, 1), ("GPipe", 2, 1, 5, 1),
    ("Interleaved1F1B", 4, 0, 8, 2), ("Interleaved1F1B", 4, 3, 8, 2), ("Interleaved1F1B", 2, 0, 4, 3)])
def test_schedule_order_runs_each_microbatch_once_with_the_cost_models_in_flight_count(schedule, stages, stage,
                                                                                        mbs, v):
    from costmodel.pipeline import in_flight
    order = schedule_order(schedule, stages, stage, mbs, v)
    every = [(op, c, i) for op in "FB" for c in range(v) for i in range(mbs)]
    assert sorted(order) == sorted(every)
    live, peak = set(), 0
    for op, c, m in order:
        if op == "F":
            assert c == 0 or ("F", c - 1, m) in order[:order.index((op, c, m))], "chunk before its predecessor"
            live.add((c, m))
        else:
            assert (c, m) in live, "backward before its forward"
            assert c == v - 1 or ("B", c + 1, m) in order[:order.index((op, c, m))], "backward out of order"
            live.remove((c, m))
        peak = max(peak, len(live))
    assert peak == in_flight(schedule, stages, stage, mbs, v) * v   # chunk-forwards in flight


def test_interleaved_plans_are_refused_with_the_fix():
    spec = ModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                     vocab_size=128)
    plan = _plan(pp=2, dp=1, pp_schedule="Interleaved1F1B", virtual_stages=2)
    cluster = ClusterSpec(nodes=1, gpus_per_node=2, gpu="h200")
    with pytest.raises(ValueError, match="pp_schedule: 1F1B"):
        verify(spec, cluster, plan, allow_cpu=True)


@cpu_only
def test_cpu_build_refuses_instead_of_giving_wrong_numbers():
    with pytest.raises(VerifyUnavailable, match="needs a CUDA build of torch"):
        verify(TINY, ClusterSpec(nodes=1, gpus_per_node=2, gpu="h200"), _plan())


@cpu_only
def test_cli_on_a_cpu_build_prints_one_line_and_exits_2(run_cli):
    code, out, err = run_cli("verify", "llama3-8b", "--cluster", "8xh100", "--plan",
                             Path(__file__).parent.parent / "recipes/plans/llama3-8b-fsdp.yaml")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: verify needs a CUDA build of torch")
    assert torch.__version__ in lines[0]


def test_plan_verify_moves_a_plan_that_does_not_fit_by_traced_memory_behind(zero2, zero3, tmp_path, monkeypatch):
    import functools

    import yaml

    import launcher.gputools.verify as lv
    from costmodel import load_profile
    from costmodel.prediction import predict
    from planner.cli_verify import rerank_verified
    from planner.tuner import Candidate, TuneResult
    # a GPU whose memory lies between the traced peaks of the zero 2 and the zero 3 plan
    prof = load_profile("h200").to_dict()
    prof.update(name="between", memory_gib=(zero2.peak_bytes + zero3.peak_bytes) / 2 / 2**30)
    for key in ("context_gib", "fragmentation"):
        prof["constants"][key] = {"value": 0.0, "source": "a GPU made up for this test"}
    (tmp_path / "between.yaml").write_text(yaml.safe_dump(prof))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"nodes": 1, "gpus_per_node": 2, "gpu": str(tmp_path / "between.yaml")}))
    monkeypatch.setattr(lv, "cuda_build", lambda: True)
    monkeypatch.setattr(lv, "verify", functools.partial(lv.verify, allow_cpu=True))
    fast, small = _plan(), _plan(zero=3)
    cands = [Candidate(plan=p, prediction=predict(TINY, cluster, p), gap=0.0, status="optimal") for p in (fast, small)]
    result = TuneResult(best=cands[0], top=cands, seconds=0.0, groups=1, groups_searched=1, cases_solved=2)
    new = rerank_verified(result, TINY, str(cluster), show=False)
    assert [c.plan.zero for c in new.top] == [3, 2]
    assert new.best.plan.zero == 3


@cpu_only
def test_plan_verify_on_a_cpu_build_warns_and_keeps_the_ranking(run_cli):
    with pytest.warns(UserWarning, match="--verify skipped: verify needs a CUDA build of torch"):
        code, out, err = run_cli("plan", "llama3.2-1b", "--cluster", "2xh200", "-b", "8", "-s", "2048", "--tp", "1",
                                 "--pp", "1", "--zero", "2", "--no-offload", "--no-compile", "--top-k", "1",
                                 "--verify", "--json")
    assert code == 0
    assert json.loads(out)["best"]["plan"]["zero"] == 2

"""The tuner: optimality against brute force, solver bounds, and sanity against public practice."""
import itertools
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from costmodel import SpecError, parse_plan
from costmodel.prediction import predict
from costmodel.specs import ClusterSpec, ModelSpec
from planner.milp import objective, solve, split_dp
from planner.space import SearchSpace, layer_counts, layouts, micro_batches
from planner.stages import KNOBS, StageTable
from planner.tuner import tune

warnings.filterwarnings("ignore", message=".*max_position_embeddings.*")
TINY = ModelSpec(name="tiny-0.5b", hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                 num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)


def brute_force(model, cluster, gbs, seq, space):
    """Every plan of the space, costed one by one with `predict` (the tuner's own shortcuts not used)."""
    L, best = model.num_hidden_layers, None
    frac = np.linspace(0, 1, space.knob_levels)
    for t, c, p, d in layouts(model, cluster, space, seq):
        for mbs, M in micro_batches(gbs, d, p, space):
            splits = [s for s in itertools.product(layer_counts(L, p, space.layer_slack), repeat=p) if sum(s) == L]
            for zero, rec, comp, every in itertools.product(space.zero, space.recompute, space.compile,
                                                            [False, True] if p == 1 and M > 1 else [False]):
                if (p > 1 and zero == 3) or (c > 1 and zero == 0):
                    continue
                for split in splits:
                    per_stage = [sorted({int(round(f * n)) for f in frac}) if rec != "none" else [0] for n in split]
                    for r in itertools.product(*per_stage):
                        if rec != "none" and not any(r):
                            continue
                        plan = parse_plan(dict(global_batch_size=gbs, micro_batch_size=mbs, seq_len=seq, dp=d,
                                               tp=t, pp=p, cp=c, zero=zero, recompute=rec,
                                               recompute_layers=list(r) if rec != "none" else None,
                                               layers_per_stage=list(split) if p > 1 else None, compile=comp,
                                               grad_reduce="every" if every else "last"))
                        pred = predict(model, cluster, plan)
                        if pred.feasible and (best is None or pred.step_time_s < best[0]):
                            best = (pred.step_time_s, plan)
    return best


@pytest.mark.parametrize("gpu, gbs, seq", [("h100-sxm", 16, 4096), ("l4", 8, 2048), ("a100-40g", 32, 8192)])
def test_tuner_matches_brute_force_on_small_cases(gpu, gbs, seq):
    cluster = ClusterSpec(nodes=1, gpus_per_node=4, gpu=gpu)
    space = SearchSpace(offload=False, knob_levels=3, schedules=("1F1B",))
    result = tune(TINY, cluster, gbs, seq, space, top_k=1, gap=0.0)
    brute = brute_force(TINY, cluster, gbs, seq, space)
    assert (result.best is None) == (brute is None)
    if brute is not None:
        assert result.best.prediction.feasible
        assert result.best.step_time_s <= brute[0] * (1 + 1e-6), (result.best.plan, brute)
        assert result.best.step_time_s >= brute[0] * (1 - 1e-6)


def random_options(rng, pp, L, n=12):
    out = []
    for _ in range(pp):
        l = rng.choice(layer_counts(L, pp, 2), n)
        t = l * rng.uniform(1.0, 1.4, n) + rng.uniform(0, 0.5, n)
        knobs = {k: np.zeros(n, dtype=np.int64) for k in KNOBS}
        knobs["l"] = l
        out.append(StageTable(knobs, t, rng.uniform(0, 3, n), np.full(n, pp)))
    return out


def test_dp_bound_and_milp_against_enumeration():
    rng = np.random.default_rng(1)
    for trial in range(20):
        pp, L, M = 3, 9, int(rng.integers(3, 12))
        opts = random_options(rng, pp, L, n=6)
        exact = min((objective(opts, list(c), M) for c in itertools.product(*(range(len(o)) for o in opts))
                     if sum(int(o.knobs["l"][j]) for o, j in zip(opts, c)) == L), default=math.inf)
        warm, lb = split_dp(opts, L, M)
        if not math.isfinite(exact):
            assert warm is None
            continue
        assert lb <= exact + 1e-9 and warm.objective >= exact - 1e-9
        assert warm.objective == pytest.approx(objective(opts, warm.picks, M))
        got = solve(opts, L, M, time_limit_s=5, gap=0.0, warm=warm)
        assert got.objective == pytest.approx(exact, rel=1e-6)
        assert sum(int(o.knobs["l"][j]) for o, j in zip(opts, got.picks)) == L


def test_milp_returns_the_incumbent_and_its_gap_on_timeout():
    rng = np.random.default_rng(7)
    opts = random_options(rng, 16, 64, n=40)
    warm, _ = split_dp(opts, 64, 32)
    got = solve(opts, 64, 32, time_limit_s=0.05, gap=0.0, warm=warm)
    assert got is not None and got.objective <= warm.objective + 1e-12
    assert got.status in ("optimal", "time limit (incumbent)")
    assert got.gap >= 0


def test_the_solver_writes_nothing_to_stdout():
    # `plan --json` prints one JSON object on stdout; HiGHS >= 1.16 prints a banner on its first model
    code = ("import numpy as np; from test_planner import random_options; "  # `-c` imports from its cwd, tests/
            "from planner.milp import solve; o = random_options(np.random.default_rng(0), 3, 9, 6); "
            "solve(o, 9, 4, time_limit_s=5)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""


def test_8b_on_one_node_uses_no_pipeline():
    best = tune("llama3-8b", "8xh100", 512, 8192).best
    assert best is not None and best.plan.pp == 1


def test_405b_at_llama3_per_gpu_batch_uses_tp8_in_node_and_a_pipeline():
    # Llama 3 trained 405B with 2,048 sequences on 16K H100s: 1/8 of a sequence per GPU. At that share FSDP's
    # per-block gathers cannot hide behind compute, so tp 8 in the node plus a pipeline is the fastest layout.
    best = tune("llama3-405b", "256x8xh100", 256, 8192).best
    assert best is not None and best.plan.tp == 8 and best.plan.pp > 1


def test_405b_on_2048_h100_with_a_large_batch_keeps_the_llama3_layout_near_the_best():
    # With a whole sequence per GPU the cost model prefers ZeRO-3 over 512-1024 ranks with full checkpointing;
    # the published layout (tp 8, pp 16, dp 16) must stay within 25 % of whatever wins. Its tensor-parallel
    # all-gathers and reduce-scatters of 256 MiB over 8 GPUs are priced from the 4-rank NVLink curves measured
    # with NVLink SHARP off (no 8-rank curve exists yet), and its 128 micro-batches each add their bf16 gradients
    # into FSDP2's fp32 accumulators, a pass Megatron-LM fuses into the weight-gradient GEMM.
    best = tune("llama3-405b", "256x8xh100", 2048, 8192).best
    llama3 = tune("llama3-405b", "256x8xh100", 2048, 8192, SearchSpace(tp=8, pp=16)).best
    assert best is not None and llama3 is not None
    assert best.plan.tp <= 8  # never across nodes
    assert llama3.step_time_s <= 1.25 * best.step_time_s


def test_model_that_needs_offload_gets_it():
    # 70B on 8 × 80 GB: 16 bytes of fp32 state per parameter alone is 140 GB per GPU
    best = tune("llama3-70b", "8xh100", 64, 4096).best
    assert best is not None
    L = 80
    assert sum(best.plan.per_stage("offload_state_layers", L)) > 0
    none = tune("llama3-70b", "8xh100", 64, 4096, SearchSpace(offload=False))
    assert none.best is None
    assert any("offload" in line for line in none.diagnosis)


def test_float8_never_makes_the_predicted_step_slower():
    for model, cluster in (("llama3-8b", "8xh100"), ("llama3.2-1b", "1xh200")):
        base = tune(model, cluster, 64, 4096).best.step_time_s
        for frac in (0.5, 1.0):
            with_fp8 = tune(model, cluster, 64, 4096, SearchSpace(fp8_budget=frac)).best
            assert with_fp8.step_time_s <= base * (1 + 1e-9)
            f = with_fp8.plan.per_stage("fp8_layers", with_fp8.plan.stage_layers(0 or 32)[0] * with_fp8.plan.pp)
            assert with_fp8.plan.compile or not any(f)


def test_pins_are_respected():
    r = tune("llama3-8b", "8xh100", 64, 4096, SearchSpace(tp=2, zero=(3,), recompute=("full",), compile=(False,)))
    for c in r.top:
        assert c.plan.tp == 2 and c.plan.zero in (2, 3) and not c.plan.compile
        assert c.plan.recompute == "full"


def test_nothing_fits_says_what_binds_and_what_would():
    r = tune("llama3-405b", "1xl4", 8, 4096)
    assert r.best is None and r.top == []
    assert "largest term" in r.diagnosis[0]
    assert any("would fit" in line or "more memory" in line for line in r.diagnosis[1:])


def test_no_legal_layout_is_explained():
    r = tune("llama3-8b", "8xh100", 7, 4096, SearchSpace(dp=8))   # 7 sequences cannot split over dp = 8
    assert r.best is None and "does not split" in r.diagnosis[0]
    with pytest.raises(ValueError):
        SearchSpace(fp8_budget=2.0)


def test_plan_cli_writes_a_plan_that_predict_accepts(tmp_path, run_cli):
    out = tmp_path / "plan.yaml"
    code, stdout, err = run_cli("plan", "llama3.2-1b", "--cluster", "2xh200", "--global-batch-size", "16",
                                "--seq-len", "2048", "-o", out)
    assert code == 0, err
    assert "top" in stdout and out.is_file()
    code, stdout, err = run_cli("predict", "llama3.2-1b", "--cluster", "2xh200", "--plan", out, "--json")
    assert code == 0
    code, stdout, err = run_cli("explain", "llama3.2-1b", "--cluster", "2xh200", "--plan", out)
    assert code == 0 and "binding" in stdout and "one-knob alternatives" in stdout


def test_plan_cli_nothing_fits_exit_1_without_traceback(run_cli):
    code, stdout, err = run_cli("plan", "llama3-405b", "--cluster", "1xl4", "-b", "8", "-s", "4096")
    assert code == 1 and "no plan fits" in stdout and "Traceback" not in stdout + err


def test_interleaving_a_pipeline_checkpoints_what_no_longer_fits_and_shrinks_the_bubble():
    from costmodel import load_cluster, load_model, profile_for
    from planner.tuner import interleave
    model, cluster = load_model("llama3-70b"), load_cluster("8x8xh100")
    base = tune(model, cluster, 256, 4096, SearchSpace(tp=8, pp=8, schedules=("1F1B",))).best
    assert base is not None and base.plan.pp_schedule == "1F1B"
    plan, pred = interleave(base.plan, model, cluster, profile_for(cluster))
    assert plan.pp_schedule == "Interleaved1F1B" and plan.virtual_stages == 2 and pred.feasible
    assert pred.time_breakdown["pipeline_bubble"] < base.prediction.time_breakdown["pipeline_bubble"]
    assert sum(plan.per_stage("recompute_layers", 80)) >= sum(base.plan.per_stage("recompute_layers", 80))


def test_single_stage_plans_do_not_need_a_pipeline_schedule():
    best = tune("llama3.2-1b", "1xh200", 8, 2048, SearchSpace(schedules=("Interleaved1F1B",))).best
    assert best is not None and best.plan.pp == 1

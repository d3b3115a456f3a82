"""The tuner: optimality against brute force over every integer knob value, a certified bound, the knob registry,
the diagnosis of each kind of failure, the flag errors, and sanity against public practice."""
import dataclasses
import itertools
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from costmodel import Plan, SpecError, check_plan, parse_plan
from costmodel.prediction import predict
from costmodel.specs import ClusterSpec, ModelSpec
from planner.knobs import BY_KEY, plan_keys
from planner.milp import objective, solve, split_dp
from planner.space import SearchSpace, layouts, micro_batches
from planner.stages import Options
from planner.tuner import tune

warnings.filterwarnings("ignore", message=".*max_position_embeddings.*")
TINY = ModelSpec(name="tiny-0.5b", hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                 num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
MID = ModelSpec(name="mid-4l", hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
"""An 8B-wide model cut to 4 blocks: memory binds on small GPUs at long sequences."""


# ---- brute force: every plan of a space, every integer per-stage count, costed by predict ---------------------
def _splits(L: int, k: int):
    if k == 1:
        yield (L,)
        return
    for first in range(1, L - k + 2):
        for rest in _splits(L - first, k - 1):
            yield (first,) + rest


def _stage_counts(n: int, offload: bool, fp8_max: int):
    for r in range(n + 1):
        for oa in (range(n - r + 1) if offload else [0]):
            for os_ in (range(n + 1) if offload else [0]):
                for f in range(fp8_max + 1):
                    yield r, oa, os_, f


def brute_force(model, cluster, gbs, seq, space):
    """The fastest feasible plan of ``space``, found by costing every plan with `predict`: every layout, micro-batch,
    schedule, plan-wide value (kernel choices and re-sharding of zero 3 in pipelines included), block split and
    integer count of checkpointed, offloaded and float8 blocks per stage (none of the tuner's tables, bounds or
    reductions). Returns (step time, plan, plans costed)."""
    best, costed = None, 0
    frac = space.max_fp8_fraction
    kernels = list(itertools.product(space.rope_impl, space.norm_impl, space.swiglu_impl, space.loss_impl))
    for t, cp, p, d in layouts(model, cluster, space, seq):
        for mbs, M in micro_batches(model, cluster, gbs, seq, t, p, d, space, cp=cp):
            scheds = [("1F1B", 1)] if p == 1 else \
                ([("1F1B", 1)] if "1F1B" in space.schedules else []) + \
                [("Interleaved1F1B", v) for v in space.virtual_stages if "Interleaved1F1B" in space.schedules]
            for (sched, v), zero, rec, comp, gr, sp, recipe, kern, reshard in itertools.product(
                    scheds, space.zero, [m for m in space.recompute if m != "none"] or ["none"], space.compile,
                    space.grad_reduce if p == 1 and M > 1 else ["last"], space.sequence_parallel if t > 1 else [True],
                    space.fp8_recipes if frac else ["tensorwise"], kernels, [False, True] if p > 1 else [False]):
                if reshard and zero != 3:
                    continue
                fp8_on = frac > 0 and (comp or not space.fp8_needs_compile)
                for split in _splits(model.num_hidden_layers, p * v):
                    per_stage = [list(_stage_counts(n, space.offload, int(frac * n + 1e-9) if fp8_on else 0))
                                 for n in split]
                    for combo in itertools.product(*per_stage):
                        r = [c[0] for c in combo]
                        if "none" not in space.recompute and min(r) == 0:
                            continue
                        partial = any(0 < c[3] < n for c, n in zip(combo, split))
                        data = dict(global_batch_size=gbs, micro_batch_size=mbs, seq_len=seq, dp=d, tp=t, pp=p, cp=cp,
                                    zero=zero, recompute=rec if any(r) else "none",
                                    recompute_layers=r if any(r) else None,
                                    offload_activation_layers=[c[1] for c in combo],
                                    offload_state_layers=[c[2] for c in combo], fp8_layers=[c[3] for c in combo],
                                    fp8_recipe=recipe, fp8_rotation_steps=100 if partial else 0,
                                    layers_per_stage=list(split), compile=comp, grad_reduce=gr, sequence_parallel=sp,
                                    pp_schedule=sched, virtual_stages=v, pp_reshard_after_forward=reshard,
                                    **dict(zip(("rope_impl", "norm_impl", "swiglu_impl", "loss_impl"), kern)))
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                pred = predict(model, cluster, parse_plan(data))
                        except SpecError:
                            continue
                        costed += 1
                        if pred.feasible and (best is None or pred.step_time_s < best[0]):
                            best = (pred.step_time_s, pred, costed)
    return best, costed


SMALL = dict(zero=(2,), compile=(True,), grad_reduce=("last",))


@pytest.mark.parametrize("model, gpu, gpus, gbs, seq, space", [
    # one GPU, memory binds: state offload, checkpointing and activation offload in exact counts
    (MID, "l4", 1, 4, 8192, SearchSpace(zero=(3,), compile=(True,), grad_reduce=("last",))),
    # float8 counts 0..4 and both recipes, selective checkpointing
    (TINY, "h100-sxm", 1, 4, 4096, SearchSpace(**SMALL, fp8_budget=1.0, recompute=("none", "selective"))),
    # a pipeline of 2, 1F1B and 2 interleaved chunks, every split, memory binding
    (MID, "l4", 2, 4, 8192, SearchSpace(**SMALL, recompute=("none", "full"), tp=1, pp=2, virtual_stages=(2,))),
    # pinned pp 2 with a share of float8 (partial counts) on A100s, long sequences
    (MID, "a100-40g", 2, 4, 16384, SearchSpace(zero=(2,), compile=(True,), recompute=("none", "full"), tp=1, pp=2,
                                               schedules=("1F1B",), fp8_budget=0.5, micro_batch_size=1,
                                               fp8_recipes=("tensorwise",))),
])
def test_tuner_matches_brute_force_over_every_integer_count(model, gpu, gpus, gbs, seq, space):
    cluster = ClusterSpec(nodes=1, gpus_per_node=gpus, gpu=gpu, host_memory_gib=64)
    brute, costed = brute_force(model, cluster, gbs, seq, space)
    result = tune(model, cluster, gbs, seq, space, top_k=1, gap=0.0)
    assert costed > 100 and brute is not None and result.best is not None
    assert result.best.step_time_s == pytest.approx(brute[0], rel=1e-9), (result.best.plan, brute[1])
    assert result.bound_s <= brute[0] * (1 + 1e-9) and result.gap <= 1e-9


def test_exact_counts_find_what_sampled_levels_missed():
    # the case: Llama-3-8B on one H100, 8 × 8192; the best offloads the state of ~20 blocks
    from costmodel import load_model
    best = tune("llama3-8b", "1xh100", 8, 8192).best
    L = 32
    assert best is not None and best.plan.pp == 1
    assert 0 < sum(best.plan.per_stage("offload_state_layers", L)) < L
    assert 0 < sum(best.plan.per_stage("recompute_layers", L)) <= L
    check_plan(best.plan, load_model("llama3-8b"))


def test_the_bound_is_certified_and_the_gap_printed():
    res = tune("llama3-8b", "8xh100", 64, 4096)
    assert res.best is not None and not res.timed_out
    assert 0 < res.bound_s <= res.best.step_time_s and res.gap <= 0.01 + 1e-12
    assert "gap to bound" in res.summary() and "time limit" not in res.summary()


def test_a_time_limit_cut_says_so_and_bounds_what_it_did_not_search():
    res = tune("llama3-8b", "8xh100", 512, 8192, time_limit_s=0.02)
    assert res.timed_out and "time limit" in res.summary()
    if res.best is not None:
        assert res.bound_s <= res.best.step_time_s
    else:
        assert "before any plan" in res.diagnosis[0]


# ---- the inter-stage solver --------------------------------------------------------------------------------
def random_options(rng, pp, L, n=12):
    out = []
    for _ in range(pp):
        lo, hi = max(1, L // pp - 2), L // pp + 2
        blocks = rng.integers(lo, hi + 1, n)
        t = blocks * rng.uniform(1.0, 1.4, n) + rng.uniform(0, 0.5, n)
        z = np.zeros(n, dtype=np.int64)
        out.append(Options(blocks, z, z, z, z, t, rng.uniform(0, 3, n)))
    return out


@pytest.mark.parametrize("v", [1, 2])
def test_dp_bound_and_milp_against_enumeration(v):
    rng = np.random.default_rng(1)
    for trial in range(20):
        pp, L, M = 3, 9, int(rng.integers(3, 12))
        opts = random_options(rng, pp, L, n=6)
        exact = min((objective(opts, list(c), M, v) for c in itertools.product(*(range(len(o)) for o in opts))
                     if sum(int(o.n[j]) for o, j in zip(opts, c)) == L), default=math.inf)
        warm, lb = split_dp(opts, L, M, v)
        if not math.isfinite(exact):
            assert warm is None
            continue
        assert lb <= exact + 1e-9 and warm.objective >= exact - 1e-9
        assert warm.objective == pytest.approx(objective(opts, warm.picks, M, v))
        got = solve(opts, L, M, v, time_limit_s=5, gap=0.0, warm=warm)
        assert got.objective == pytest.approx(exact, rel=1e-6)
        assert got.bound <= exact + 1e-9
        assert sum(int(o.n[j]) for o, j in zip(opts, got.picks)) == L


def test_milp_returns_the_incumbent_and_its_bound_on_timeout():
    rng = np.random.default_rng(7)
    opts = random_options(rng, 16, 64, n=40)
    warm, _ = split_dp(opts, 64, 32)
    got = solve(opts, 64, 32, time_limit_s=0.05, gap=0.0, warm=warm)
    assert got is not None and got.objective <= warm.objective + 1e-12
    assert got.status in ("optimal", "time limit (incumbent)")
    assert 0 <= got.bound <= got.objective


def test_the_solver_writes_nothing_to_stdout():
    # `plan --json` prints one JSON object on stdout; HiGHS >= 1.16 prints a banner on its first model
    code = ("import numpy as np; from test_planner import random_options; "  # `-c` imports from its cwd, tests/
            "from planner.milp import solve; o = random_options(np.random.default_rng(0), 3, 9, 6); "
            "solve(o, 9, 4, time_limit_s=5)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""


# ---- the knob registry -------------------------------------------------------------------------------------
def test_every_plan_key_has_one_entry_in_the_knob_registry():
    assert set(plan_keys()) == set(BY_KEY), "register a new plan key in planner/knobs.py"
    assert all(k.scope in ("layout", "schedule", "case", "stage", "fixed") and k.doc for k in BY_KEY.values())
    assert all(k.values is not None for k in BY_KEY.values() if k.scope == "case")


def test_every_knob_dimension_is_searched():
    # sequence parallelism off, 4 interleaved chunks, GPipe and rowwise float8 are all reachable by pinning them
    mid8 = dataclasses.replace(MID, name="mid-8l", num_hidden_layers=8)
    cluster = ClusterSpec(nodes=1, gpus_per_node=2, gpu="h100-sxm")
    for pins, check in ((dict(tp=2, pp=1, sequence_parallel=False), lambda p: not p.sequence_parallel),
                        (dict(pp=2, schedules=("Interleaved1F1B",), virtual_stages=(4,)),
                         lambda p: p.pp_schedule == "Interleaved1F1B" and p.virtual_stages == 4),
                        (dict(pp=2, schedules=("GPipe",)), lambda p: p.pp_schedule == "GPipe"),
                        (dict(fp8_budget=1.0, fp8_recipes=("rowwise",), compile=(True,)),
                         lambda p: p.fp8_recipe == "rowwise" and p.fp8_layers)):
        best = tune(mid8, cluster, 16, 4096, SearchSpace(**pins)).best
        assert best is not None and check(best.plan), (pins, best and best.plan)


# ---- runner-ups -----------------------------------------------------------------------------------------------
def test_runner_ups_say_what_differs_and_equivalent_plans_merge(run_cli):
    res = tune("llama3-8b", "8xh100", 64, 4096, top_k=4)
    times = [c.step_time_s for c in res.top]
    assert times == sorted(times) and len(set(round(t, 9) for t in times)) == len(times)
    from planner.explain import runner_up_lines
    lines = runner_up_lines(res, 32)
    assert len(lines) >= len(res.top) - 1 and all("step time" in line for line in lines if line.startswith("#2"))
    # a plan equivalent to #1 (zero 0 at dp 1 costs what zero 2 does) never takes a row of its own
    single = tune(TINY, ClusterSpec(nodes=1, gpus_per_node=1, gpu="h100-sxm"), 8, 2048,
                  SearchSpace(zero=(0, 2, 3)), top_k=5)
    keys = [(round(c.step_time_s, 12), round(c.prediction.peak_memory_bytes)) for c in single.top]
    assert len(keys) == len(set(keys))


# ---- the flags -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, words", [
    ("--time-limit", "0", "--time-limit"), ("--time-limit", "-1", "--time-limit"),
    ("--time-limit", "nan", "--time-limit"),
    ("--gap", "2", "gap"), ("--gap", "-0.1", "gap"), ("--gap", "1", "gap"), ("--top-k", "0", "top-k")])
def test_search_flags_out_of_range_are_one_line_errors(run_cli, flag, value, words):
    code, out, err = run_cli("plan", "llama3-8b", "--cluster", "8xh100", "-b", "64", "-s", "4096", flag, value)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


@pytest.mark.parametrize("kw", [dict(time_limit_s=0), dict(time_limit_s=-1.0), dict(time_limit_s=float("nan")),
                                dict(gap=1.0), dict(gap=-0.5), dict(top_k=0)])
def test_search_arguments_out_of_range_raise_value_error(kw):
    import planner
    with pytest.raises(ValueError):
        planner.plan(TINY, ClusterSpec(nodes=1, gpus_per_node=1, gpu="h100-sxm"), global_batch_size=8, seq_len=2048,
                     **kw)


def test_the_readme_command_is_fast_and_prints_the_gap(run_cli):
    code, out, err = run_cli("plan", "llama3-8b", "--cluster", "8xh100", "--global-batch-size", "512",
                             "--seq-len", "8192")
    assert code == 0, err
    assert "gap to bound" in " ".join(out.split()) and "top" in out


# ---- diagnosis -----------------------------------------------------------------------------------------------
L4 = ClusterSpec(name="1xl4", nodes=1, gpus_per_node=1, gpu="l4")


def test_time_limit_before_any_plan_is_not_called_no_fit():
    res = tune("llama3-8b", "8xh100", 512, 8192, time_limit_s=1e-6)
    assert res.best is None and res.timed_out
    assert res.diagnosis[0].startswith("time limit reached before any plan") and "raise --time-limit" in \
        res.diagnosis[0]


def test_no_fit_names_what_binds_and_the_smallest_changes_checked_by_the_tuner():
    res = tune("llama3.2-3b", L4, 16, 8192, SearchSpace(offload=False))
    assert res.best is None and not res.timed_out
    assert res.diagnosis[0].startswith("no plan fits: even the least-memory plan") and "largest term" in \
        res.diagnosis[0]
    text = " | ".join(res.diagnosis)
    assert "relaxing the pin offload=False fits" in text           # the user's pin, and what unpinning gives
    assert "GPUs (" in text and "would fit" in text                  # more GPUs, checked by the tuner


def test_no_fit_on_a_pipeline_layout_builds_a_legal_least_memory_plan_and_names_host_memory():
    # pinned pp 2: the least-memory plan offloads every block of each stage as a per-stage list (check_plan accepts)
    from costmodel import load_model, profile_for
    from planner.diagnose import least_memory_plan
    model = load_model("llama2-13b")
    cluster = ClusterSpec(nodes=1, gpus_per_node=2, gpu="h100-sxm", host_memory_gib=16)
    space = SearchSpace(pp=2)
    pred, data = least_memory_plan(model, cluster, 8, 4096, space, profile_for(cluster))
    plan = parse_plan(data)
    check_plan(plan, model, cluster)
    assert plan.pp == 2 and plan.offload_state_layers == plan.stage_layers(40)
    res = tune(model, cluster, 8, 4096, space)
    assert res.best is None and not res.timed_out
    assert "host memory binds" in res.diagnosis[0] and "GiB of host memory per node" in res.diagnosis[0]
    assert any("would fit" in line for line in res.diagnosis[1:])


def test_no_fit_with_pins_says_which_pin_to_relax():
    # (the compiled loss would fit it: its bf16 logits take half the eager loss's fp32 ones)
    res = tune("llama3-8b", "1xh100", 8, 8192, SearchSpace(recompute=("none",), micro_batch_size=8,
                                                           loss_impl=("eager",)))
    assert res.best is None
    text = " | ".join(res.diagnosis)
    assert "zero" not in res.diagnosis[0] or "no checkpointing" in res.diagnosis[0]   # the pin is respected
    assert "relaxing the pin" in text


def test_no_legal_layout_is_explained():
    r = tune("llama3-8b", "8xh100", 7, 4096, SearchSpace(dp=8))   # 7 sequences cannot split over dp = 8
    assert r.best is None and "does not split" in r.diagnosis[0]
    with pytest.raises(ValueError):
        SearchSpace(fp8_budget=2.0)


def test_plan_cli_nothing_fits_exit_1_without_traceback(run_cli):
    code, stdout, err = run_cli("plan", "llama3.2-3b", "--cluster", "1xl4", "-b", "16", "-s", "8192", "--no-offload")
    assert code == 1 and "no plan fits" in stdout and "Traceback" not in stdout + err


# ---- sanity against public practice -----------------------------------------------------------------------------
def test_8b_on_one_node_uses_no_pipeline():
    best = tune("llama3-8b", "8xh100", 512, 8192).best
    assert best is not None and best.plan.pp == 1


def test_405b_at_llama3_per_gpu_batch_uses_tp8_in_node_and_a_pipeline():
    # Llama 3 trained 405B with 2,048 sequences on 16K H100s: 1/8 of a sequence per GPU. At that share FSDP's
    # per-block gathers cannot hide behind compute, so tp 8 in the node plus a pipeline is the fastest layout.
    best = tune("llama3-405b", "256x8xh100", 256, 8192, time_limit_s=600).best
    assert best is not None and best.plan.tp == 8 and best.plan.pp > 1


def test_405b_on_2048_h100_with_a_large_batch_keeps_the_llama3_layout_near_the_best():
    # With a whole sequence per GPU the cost model prefers ZeRO-3 over 512-1024 ranks with full checkpointing;
    # the published layout (tp 8, pp 16, dp 16) must stay within 25 % of whatever wins. Its tensor-parallel
    # all-gathers and reduce-scatters of 256 MiB over 8 GPUs are priced from the 4-rank NVLink curves measured
    # with NVLink SHARP off (no 8-rank curve exists yet), and its 128 micro-batches each add their bf16 gradients
    # into FSDP2's fp32 accumulators, a pass Megatron-LM fuses into the weight-gradient GEMM.
    best = tune("llama3-405b", "256x8xh100", 2048, 8192, time_limit_s=600)
    llama3 = tune("llama3-405b", "256x8xh100", 2048, 8192, SearchSpace(tp=8, pp=16), time_limit_s=600).best
    assert best.best is not None and llama3 is not None and not best.timed_out
    assert best.best.plan.tp <= 8  # never across nodes
    assert best.best.step_time_s <= llama3.step_time_s * (1 + 1e-9)
    assert llama3.step_time_s <= 1.25 * best.best.step_time_s


def test_model_that_needs_offload_gets_it():
    # 70B on 8 × 80 GB: 16 bytes of fp32 state per parameter alone is 140 GB per GPU
    best = tune("llama3-70b", "8xh100", 64, 4096, SearchSpace(tp=8)).best
    assert best is not None
    assert sum(best.plan.per_stage("offload_state_layers", 80)) > 0
    none = tune("llama3-70b", "8xh100", 64, 4096, SearchSpace(tp=8, offload=False))
    assert none.best is None
    assert any("relaxing the pin offload=False fits" in line for line in none.diagnosis)


def test_float8_never_makes_the_predicted_step_slower():
    for model, cluster in (("llama3-8b", "8xh100"), ("llama3.2-1b", "1xh200")):
        base = tune(model, cluster, 64, 4096).best.step_time_s
        for frac in (0.5, 1.0):
            with_fp8 = tune(model, cluster, 64, 4096, SearchSpace(fp8_budget=frac)).best
            assert with_fp8.step_time_s <= base * (1 + 1e-9)
            assert with_fp8.plan.compile or not with_fp8.plan.fp8_layers


def test_pins_are_respected():
    r = tune("llama3-8b", "8xh100", 64, 4096, SearchSpace(tp=2, zero=(3,), recompute=("full",), compile=(False,)))
    for c in r.top:
        assert c.plan.tp == 2 and c.plan.zero in (2, 3) and not c.plan.compile
        assert c.plan.recompute == "full"


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


def test_single_stage_plans_do_not_need_a_pipeline_schedule():
    best = tune("llama3.2-1b", "1xh200", 8, 2048, SearchSpace(schedules=("Interleaved1F1B",))).best
    assert best is not None and best.plan.pp == 1


def test_every_returned_plan_passes_check_plan():
    from costmodel import load_cluster, load_model
    for name, cluster_name, pins in (("llama3-8b", "8xh100", dict(pp=2)), ("llama3-70b", "8xh100", dict(tp=8))):
        model, cluster = load_model(name), load_cluster(cluster_name)
        top = tune(model, cluster, 64, 4096, SearchSpace(**pins), top_k=5).top
        assert top
        for c in top:
            check_plan(c.plan, model, cluster)
            assert isinstance(c.plan, Plan) and dataclasses.asdict(c.plan)


@pytest.mark.parametrize("pins", [dict(tp=(2,)), dict(pp=0), dict(ep=2.5), dict(micro_batch_size=True)])
def test_a_degree_is_pinned_with_one_whole_number(pins):
    (key,) = pins
    with pytest.raises(ValueError, match=f"^{key} .*one whole number"):
        SearchSpace(**pins)

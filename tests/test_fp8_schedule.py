"""The float8 schedule (launcher/runtime/parallel/fp8_schedule.py): loss-aware draws, the sensitivity probe, the
same sets on every rank and after a resume, the sliding window at temperature 0, and the float8 budget of the
tuner. Forked gloo ranks and torchao's CPU emulation, as the other trainer tests."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trainer_harness import TINY, assert_close, config, needs_torchao, plan_of, reference, spawn

import planner
from costmodel import SpecError, load_cluster, load_model, parse_fp8_budget
from costmodel.prediction import predict
from launcher.runtime.parallel.fp8_schedule import Fp8Schedule, sample_blocks, sliding_window

# ---- the draw ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_a_draw_of_one_block_follows_the_inverse_sensitivity_law(temperature):
    s = np.array([1.0, 2.0, 4.0, 8.0])
    picks = np.bincount([sample_blocks(s, num_blocks=1, temperature=temperature, seed=7, stage=0, period=p)[0]
                         for p in range(4000)], minlength=4) / 4000
    law = s ** (-1 / temperature) / (s ** (-1 / temperature)).sum()   # P(b) ∝ s_b^(-1/T)
    assert np.abs(picks - law).max() < 0.03, (picks, law)


def test_draws_depend_on_seed_stage_and_period_only_and_sensitivity_zero_is_uniform():
    s = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 1.5])
    draw = lambda **kw: sample_blocks(s, **{"num_blocks": 3, "temperature": 1.0, "seed": 1, "stage": 0,  # noqa
                                            "period": 0, **kw})
    assert all(draw(period=p) == draw(period=p) for p in range(20))
    assert len({tuple(draw(period=p)) for p in range(20)}) > 3        # the set moves between periods
    assert [draw(seed=2, period=p) for p in range(20)] != [draw(period=p) for p in range(20)]
    assert [draw(stage=1, period=p) for p in range(20)] != [draw(period=p) for p in range(20)]
    counts = np.bincount([b for p in range(3000) for b in sample_blocks(np.zeros(6), num_blocks=3, temperature=1.0,
                                                                        seed=0, stage=0, period=p)], minlength=6)
    assert np.abs(counts / 3000 - 0.5).max() < 0.04


def test_every_block_keeps_a_chance():
    s = np.array([1.0, 1.0, 1.0, 1000.0])
    picked = sum(3 in sample_blocks(s, num_blocks=2, temperature=1.0, seed=0, stage=0, period=p)
                 for p in range(20000))
    assert 0 < picked < 100   # ~0.08 % of the draws: rarely, never never


def test_temperature_zero_is_the_sliding_window_of_every_stage():
    plan = plan_of(pp=2, fp8_layers=[1, 1], fp8_rotation_steps=3, layers_per_stage=[3, 1])
    sched = Fp8Schedule(stage_layers=plan.stage_layers(4), counts=plan.per_stage("fp8_layers", 4), rotation_steps=3,
                        temperature=0.0, recipe="tensorwise", seed=0, linears={}, width=7)
    assert [sched.window(t) for t in range(0, 12, 3)] == [[0, 3], [1, 3], [2, 3], [0, 3]]
    assert sched.window(4) == [1, 3] and plan.fp8_share(4) == 0.5
    assert sliding_window(5, num_blocks=2, total=3) == [1, 2] and sliding_window(0, num_blocks=4, total=3) == [0, 1, 2]


def test_a_restored_schedule_draws_the_current_period_from_the_saved_snapshot():
    def fresh():
        return Fp8Schedule(stage_layers=[4], counts=[2], rotation_steps=2, temperature=1.0, recipe="tensorwise",
                           seed=5, linears={}, width=7)
    sched = fresh()
    sched.ema = np.array([1.0, 1.0, 1.0, 1e6])          # period 1 is drawn from this: block 3 all but excluded
    drawn = sched.window(2)
    sched.ema = np.array([1e6, 1e6, 1.0, 1.0])          # a probe later in period 1 (step 2) changes the EMA
    state = json.loads(json.dumps(sched.state_dict()))  # through the checkpoint's JSON
    restored, naive = fresh(), fresh()
    restored.load_state_dict(state)
    naive.ema = np.array(state["ema"])                  # the EMA alone, without the period's snapshot
    assert restored.window(3) == drawn == sched.window(3) and 3 not in drawn
    assert naive.window(3) == [2, 3]
    assert restored.window(4) == naive.window(4) == [2, 3]   # the next period is drawn from the new EMA


# ---- the probe, measured -------------------------------------------------------------------------------------


def _measure(rank: int, outlier: float) -> list[float]:
    """One backward of the tiny model with every block's Linears in float8, then block 2's weights given one
    entry ``outlier`` times their largest (the tensorwise scale follows it: the other entries fall towards and
    below e4m3's smallest normal, where rounding is coarse), then the probe."""
    from launcher.runtime.model import build_model
    from launcher.runtime.parallel.fp8 import apply_fp8
    from launcher.runtime.parallel.fp8_schedule import block_sensitivity
    model = build_model(TINY, 16)
    model.to_empty(device="cpu")
    model.init_weights(seed=0)
    groups = apply_fp8(model, num_blocks=4, recipe="tensorwise", emulate=True, rotating=True, skip_small=False)
    tokens = torch.randint(0, TINY.vocab_size, (4, 17), generator=torch.Generator().manual_seed(0))
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    with torch.no_grad():   # after backward: the gradients stay those of the plain model
        for lin in groups[2]:
            lin.weight[0, 0] = outlier * lin.weight.abs().max()
    sched = Fp8Schedule.from_parts([(0, model)], plan=plan_of(fp8_layers=2, fp8_rotation_steps=1, fp8_temperature=1.0),
                                   num_layers=4, seed=0)
    return block_sensitivity(sched.linears, num_layers=4, width=sched.width, recipe="tensorwise",
                             device=torch.device("cpu")).tolist()


@needs_torchao
def test_a_block_measured_more_sensitive_is_quantized_less_often_over_1000_periods():
    plain, sharp = spawn(_measure, 1, 1.0)[0], spawn(_measure, 1, 3e4)[0]
    assert sharp[2] > 10 * plain[2] and sharp[2] > 10 * max(np.delete(sharp, 2))   # the probe sees the underflow
    assert np.delete(sharp, 2).tolist() == np.delete(plain, 2).tolist()              # and nothing else changed
    sched = Fp8Schedule(stage_layers=[4], counts=[2], rotation_steps=1, temperature=1.0, recipe="tensorwise",
                        seed=3, linears={}, width=7)
    sched.ema = np.array(sharp)
    counts = np.bincount([b for t in range(1000) for b in sched.window(t)], minlength=4)
    others = np.delete(counts, 2)
    assert 0 < counts[2] < others.min(), counts


# ---- the trainer: same sets on every rank, across a resume; temperature 0 leaves training as it was ---------


def run_recording(rank: int, cfg) -> dict:
    """Worker: the trainer, recording the window and the smoothed sensitivities each step begins with."""
    from launcher.runtime.parallel import fp8_schedule
    from launcher.runtime.trainer import run
    seen, set_step = [], fp8_schedule.Fp8Schedule.set_step

    def recording(self, step):
        window = set_step(self, step)
        seen.append({"step": step, "window": window, "ema": self.ema.tolist(), "probes": self.probes})
        return window
    fp8_schedule.Fp8Schedule.set_step = recording
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run(cfg)
    return {"seen": seen, "losses": out["losses"]}


@needs_torchao
def test_drawn_sets_are_the_same_on_every_rank_and_after_a_resume(tmp_path):
    # rotation every step, a probe after every step: each draw uses the sensitivities the last step measured
    plan = plan_of(dp=2, fp8_layers=2, fp8_rotation_steps=2, fp8_temperature=0.5)
    full = spawn(run_recording, 2, config(plan, steps=6, out=str(tmp_path / "full"), checkpoint_every=3,
                                          fp8_probe_every=1))
    assert full[0]["seen"] == full[1]["seen"]
    seen = full[0]["seen"]
    assert seen[-1]["probes"] == 5 and min(seen[-1]["ema"]) > 0
    assert len({tuple(x["window"]) for x in seen}) > 1
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step-00000006")
    resumed = spawn(run_recording, 2, config(plan, steps=6, out=str(resumed_dir), fp8_probe_every=1))
    assert resumed[0]["seen"] == resumed[1]["seen"] == seen[3:]     # resumed mid-period (step 3 of period 1)
    assert_close(resumed[0]["losses"], full[0]["losses"][3:], rtol=1e-6, what="resumed loss")


@needs_torchao
def test_pipeline_stages_probe_their_own_blocks_and_agree_on_every_window():
    plan = plan_of(pp=2, fp8_layers=1, fp8_rotation_steps=1, fp8_temperature=1.0)
    out = spawn(run_recording, 2, config(plan, steps=4, fp8_probe_every=1))
    assert out[0]["seen"] == out[1]["seen"]
    last = out[0]["seen"][-1]
    assert min(last["ema"]) > 0                                     # blocks 0-1 from rank 0, 2-3 from rank 1
    assert all(sum(b < 2 for b in x["window"]) == 1 for x in out[0]["seen"])   # one block per stage


@needs_torchao
def test_temperature_zero_reproduces_the_sliding_window_and_probing_changes_nothing(tmp_path):
    plan = plan_of(dp=2, fp8_layers=1, fp8_rotation_steps=2)
    out = spawn(run_recording, 2, config(plan, out=str(tmp_path / "run"), checkpoint_at_end=False,
                                         fp8_probe_every=1))
    losses, _ = reference(plan_of(), fp8_layers=1, fp8_rotation_steps=2, micro_batch_size=2)
    assert_close(out[0]["losses"], losses, what="float8 window with probes")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["fp8_window"] for x in lines] == [[0], [0], [1], [1], [2]]
    assert all(len(x["fp8_sensitivity"]) == 4 and x["fp8_probe_s"] >= 0 for x in lines)


# ---- user errors: one line naming the key and the fix, exit 2 --------------------------------------------------


@pytest.mark.parametrize("value", [1.5, -0.1, "most"])
def test_a_budget_outside_0_1_is_refused_naming_the_key(value, run_cli):
    with pytest.raises(SpecError, match="fp8_budget: is .*; give the share of block-steps allowed in float8"):
        parse_fp8_budget(value)
    code, _, err = run_cli("plan", "llama3.2-1b", "--cluster", "1xh200", "-b", "4", "-s", "2048",
                           "--fp8-budget", value)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "fp8_budget" in err and "[0, 1]" in err
    with pytest.raises(ValueError, match="fp8_budget"):
        planner.plan("llama3.2-1b", "1xh200", global_batch_size=4, seq_len=2048, fp8_budget=value)


def _train_main(tmp_path, capsys, plan_changes: dict, *flags: str) -> tuple[int, list[str]]:
    import yaml

    from launcher.runtime.train import main
    formatwarning = warnings.formatwarning   # main() sets its own for the process; give pytest back its own
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({k: v for k, v in TINY.__dict__.items() if v is not None}))
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({**plan_of().to_dict(), **plan_changes}))
    try:
        code = main(["--plan", str(tmp_path / "plan.yaml"), "--model", str(tmp_path / "tiny.yaml"), *flags])
    finally:
        warnings.formatwarning = formatwarning
    return code, [x for x in capsys.readouterr().err.splitlines() if x.strip()]


def test_a_negative_temperature_is_refused_naming_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code, err = _train_main(tmp_path, capsys, dict(fp8_layers=1, fp8_rotation_steps=2, fp8_temperature=-1))
    assert code == 2 and len(err) == 1
    assert "fp8_temperature: is -1.0; use 0 (sliding window) or a positive temperature" in err[0]
    code, err = _train_main(tmp_path, capsys, dict(fp8_layers=1, fp8_temperature=1))
    assert code == 2 and "fp8_temperature: is 1.0 with fp8_rotation_steps 0" in err[0]


def test_float8_on_a_gpu_without_float8_is_refused_naming_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    code, err = _train_main(tmp_path, capsys, dict(fp8_layers=1))
    assert code == 2 and len(err) == 1
    assert "fp8_layers: float8 needs a GPU of compute capability 8.9 or newer" in err[0]
    assert "NVIDIA A100-SXM4-80GB is 8.0; set fp8_layers: 0" in err[0]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    from launcher.runtime.config import validate
    validate(config(plan_of(fp8_layers=1)), world_size=1)            # an H100 passes


# ---- the tuner's budget and what explain says --------------------------------------------------------------------


def test_the_budget_bounds_the_float8_share_the_tuner_chooses():
    auto = parse_fp8_budget("auto")
    assert 0 < auto <= 1 and parse_fp8_budget("off") == 0 == parse_fp8_budget(None)
    shares = {}
    for budget in ("off", 0.25, "auto"):
        best = planner.plan("llama3-8b", "8xh100", global_batch_size=64, seq_len=4096, fp8_budget=budget).best
        shares[budget] = best.plan.fp8_share(32)
        if 0 < shares[budget] < 1:   # a partial set rotates, drawn loss-aware
            assert best.plan.fp8_rotation_steps == 100 and best.plan.fp8_temperature == 1.0
    assert shares["off"] == 0 and 0 < shares[0.25] <= 0.25 and 0.25 < shares["auto"] <= auto


def test_explain_says_what_float8_buys_and_what_share_it_quantizes():
    from planner.explain import alternatives, float8_effect
    m, c = load_model("llama3-8b"), load_cluster("8xh100")
    base = dict(global_batch_size=64, micro_batch_size=2, seq_len=4096, dp=8, tp=1, pp=1, zero=2,
                recompute="none", compile=True)
    plan = planner.api._load_plan({**base, "fp8_layers": 16, "fp8_rotation_steps": 100, "fp8_temperature": 1.0})
    pred = predict(m, c, plan)
    bf16 = predict(m, c, planner.api._load_plan(base))
    note = float8_effect(m, c, plan, pred)
    gain = bf16.step_time_s / pred.step_time_s - 1
    assert note.startswith("16 of 32 blocks run in float8 (50% of block-steps, drawn every 100 steps, loss-aware")
    assert f"{gain:.1%} faster than in bf16" in note and "sensitivity probe" in note
    assert pred.fp8_probe_s > 0 and float8_effect(m, c, planner.api._load_plan(base), bf16) is None
    off = next(a for a in alternatives(m, c, plan, pred) if a.change == "float8 off")
    assert off.prediction.step_time_s == pytest.approx(bf16.step_time_s)


# ---- the GPU benchmark, end to end on the CPU ---------------------------------------------------------------------


@needs_torchao
def test_the_gpu_benchmark_runs_end_to_end_on_cpu_and_the_report_fills_the_note(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks import fp8_schedule_report
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu.fp8_schedule", "--out", str(tmp_path / "run"),
                          "--cpu-smoke", "--models", "llama3.2-1b"], cwd=root, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "run" / "llama3.2-1b" / "loss-aware" / "metrics.jsonl").read_text()
             .splitlines()]
    assert [x["step"] for x in lines if "fp8_sensitivity" in x] == [3, 6, 9, 12]   # no GPU profile: once a period
    assert len({tuple(x["fp8_window"]) for x in lines}) > 1
    note = tmp_path / "note.md"
    note.write_text(f"intro\n{fp8_schedule_report.BEGIN}\nstale\n{fp8_schedule_report.END}\noutro\n")
    assert fp8_schedule_report.main([str(tmp_path / "run"), "--md", str(note), "--tail", "5", "--warmup", "3"]) == 0
    text = note.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale" not in text
    for arm, share in (("bf16", "0%"), ("static", "50%"), ("window", "50%"), ("loss-aware", "50%")):
        assert f"| llama3.2-1b | {arm} | {share} |" in text
    assert "llama3.2-1b: loss-aware vs bf16" in text

"""The benchmark driver (many plans in one process group) and the summary's prediction beside measurements."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from trainer_harness import BASE_PLAN, TINY, assert_close, config, plan_of, run_plan, spawn

import costmodel
from costmodel import ClusterSpec
from launcher.runtime.metrics import summarize


def write_plans(tmp_path, entries):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({k: v for k, v in TINY.__dict__.items() if v is not None}))
    plans = [{"name": n, "model": str(tmp_path / "tiny.yaml"), "plan": {**BASE_PLAN, **p}} for n, p in entries]
    (tmp_path / "plans.yaml").write_text(yaml.safe_dump(plans))
    return str(tmp_path / "plans.yaml")


def bench(rank, argv, oom_name=None):
    import launcher.runtime.bench as b
    if oom_name:
        real = b.run

        def fake(cfg):
            if cfg.plan.zero == 2:  # the entry named oom_name is the only zero-2 plan
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(cfg)
        b.run = fake
    return b.main(argv)


def lines(tmp_path):
    return [json.loads(x) for x in (tmp_path / "out" / "bench.jsonl").read_text().splitlines()]


def test_bench_measures_each_plan_and_records_errors(tmp_path):
    plans = write_plans(tmp_path, [("dp2", {"dp": 2}), ("wrong-world", {"dp": 4}), ("tp2", {"tp": 2})])
    argv = ["--plans", plans, "--out", str(tmp_path / "out"), "--steps", "3", "--warmup", "1"]
    assert spawn(bench, 2, argv) == [0, 0]
    got = {x["name"]: x for x in lines(tmp_path)}
    assert list(got) == ["dp2", "wrong-world", "tp2"]
    assert "WORLD_SIZE is 2" in got["wrong-world"]["error"]
    for name in ("dp2", "tp2"):
        assert got[name]["steps_measured"] == 2 and got[name]["step_time_s"] > 0 and got[name]["oom"] is False
        assert "prediction_error" in got[name]  # CPU: no GPU profile and no --cluster
    # the driver trains exactly what the trainer does (default bench settings: AdamW, seed 0)
    solo = spawn(run_plan, 2, config(plan_of(dp=2), steps=3, optimizer="adamw", lr=3e-4, seed=0, max_grad_norm=1.0))
    assert_close(got["dp2"]["losses"], solo[0]["losses"], rtol=1e-6, what="bench vs run")
    assert spawn(bench, 2, argv) == [0, 0]  # a rerun skips entries already measured
    assert len(lines(tmp_path)) == 3


def test_bench_on_one_rank_survives_out_of_memory(tmp_path):
    plans = write_plans(tmp_path, [("big", {"zero": 2}), ("after", {})])
    argv = ["--plans", plans, "--out", str(tmp_path / "out"), "--steps", "2", "--warmup", "1"]
    assert spawn(bench, 1, argv, "big") == [0]
    big, after = lines(tmp_path)
    assert big["oom"] is True and "simulated" in big["error"]
    assert after["oom"] is False and after["step_time_s"] > 0


RECORDS = [{"step": i, "step_time_s": t, "tokens_per_s_per_gpu": 100.0 / t, "mfu": None, "loss": 5.0 - i,
            "peak_memory_bytes": m, "peak_reserved_bytes": m} for i, (t, m) in enumerate([(9.0, 1e9), (2.0, 3e9),
                                                                                         (1.0, 2e9), (3.0, 2e9)])]


def test_summary_sets_prediction_beside_measurement(monkeypatch):
    class Fake:
        def to_dict(self):
            return {"step_time_s": 3.0, "peak_memory_bytes": 2.7e9}
    monkeypatch.setattr(costmodel, "predict", lambda model, cluster, plan: Fake(), raising=False)
    out = summarize(RECORDS, timing_warmup_steps=1, model=TINY, plan=plan_of(),
                    cluster=ClusterSpec(nodes=1, gpus_per_node=1, gpu="h200"), extra={})
    assert out["step_time_s"] == 2.0 and out["peak_memory_bytes"] == 3e9  # median after warm-up; max memory
    assert out["error_pct"] == pytest.approx({"step_time_s": 50.0, "peak_memory_bytes": -10.0})
    assert out["final_loss"] == 2.0


def test_summary_without_predict_says_why(monkeypatch):
    def missing(model, cluster, plan):
        raise ImportError("no module costmodel.prediction")
    monkeypatch.setattr(costmodel, "predict", missing, raising=False)
    out = summarize(RECORDS, timing_warmup_steps=1, model=TINY, plan=plan_of(),
                    cluster=ClusterSpec(nodes=1, gpus_per_node=1, gpu="h200"), extra={})
    assert "predicted" not in out and "ImportError" in out["prediction_error"]

"""The kernel and runtime GPU scripts (benchmarks/gpu/kernel_bench, kernel_loss_curves, runtime_vs_torchtitan, tuner_grid) in
their --cpu-smoke mode on the tiny model, the comparison's summary, and the 8k grid holding the tuner's plan."""
from __future__ import annotations

import json
import warnings

import pytest
import yaml
from trainer_harness import spawn

from benchmarks import runtime_vs_torchtitan as summary
from benchmarks.gpu import kernel_bench, kernel_loss_curves, kit, runtime_vs_torchtitan, tuner_grid


@pytest.fixture(autouse=True)
def no_wheels(tmp_path, monkeypatch):
    monkeypatch.setattr(kit, "WHEELS", tmp_path / "no-wheels")   # CI has none; a developer's .whl stays unused


def test_kernel_bench_times_every_plain_choice_and_reports_liger_unavailable(tmp_path):
    assert kernel_bench.main(["--out", str(tmp_path), "--cpu-smoke", "--budget-s", "120"]) == 0
    got = json.loads((tmp_path / "kernel_bench.json").read_text())
    done = {(r["kernel"], r.get("choice")) for r in got["rows"] if "seconds" in r}
    assert {("rope_impl", "eager"), ("rope_impl", "eager_transposed"), ("norm_impl", "eager"),
            ("swiglu_impl", "eager"), ("loss_impl", "eager"), ("loss_impl", "compiled")} <= done
    assert any("CUDA GPU" in r.get("skipped", "") for r in got["rows"])


def test_implied_constants_add_the_measured_difference_to_the_reference():
    rows = [{"kernel": "rope_impl", "choice": c, "model": "m", "elements": 10**9, "seconds": s}
            for c, s in (("eager_transposed", 0.010), ("eager", 0.004))]
    (ref, new) = kernel_bench.implied_constants(rows)
    assert ref["implied"] == pytest.approx(22.0)
    assert new["constant"] == "rope_bytes_eager" and new["implied"] < 22.0


def _loss_curves(rank, out):
    return kernel_loss_curves.main(["--out", out, "--cpu-smoke", "--steps", "3",
                                    "--arms", "baseline,rope-eager,loss-liger-fused"])


def test_loss_curves_compare_each_arm_with_the_baseline(tmp_path):
    assert spawn(_loss_curves, 1, str(tmp_path), timeout_s=300) == [0]
    got = json.loads((tmp_path / "kernel_loss_curves.json").read_text())["arms"]
    assert got["rope-eager"]["within_tolerance"] is True and abs(got["rope-eager"]["rel_diff"]) < 1e-6
    assert got["loss-liger-fused"]["ran_as_asked"] is False   # no GPU: it fell back, so it is not compared
    assert (tmp_path / "baseline" / "metrics.jsonl").is_file()


def test_runtime_comparison_smoke_writes_one_line_per_plan_and_engine(tmp_path):
    assert runtime_vs_torchtitan.main(["--out", str(tmp_path), "--cpu-smoke", "--names", "l1b-s4k-none",
                                       "--budget-s", "240"]) == 0
    lines = kit.read_jsonl(tmp_path / runtime_vs_torchtitan.LINES)
    by = {x["engine"]: x for x in lines}
    assert set(by) == {"loadmaster", "torchtitan", "plain"}
    for engine in ("loadmaster", "plain"):
        assert set(runtime_vs_torchtitan.KEEP) <= set(by[engine]) and by[engine]["step_time_s"] > 0
    assert "CUDA" in by["torchtitan"]["error"]
    bench = kit.read_jsonl(tmp_path / "loadmaster-bench.jsonl")
    assert bench[0]["kernels"]["rope_impl"] == "eager" and bench[0]["plan"]["seq_len"] == 64


def test_the_summary_checks_every_plan_and_the_median():
    def line(plan, engine, tok, gib):
        return {"plan": plan, "engine": engine, "gpu": "NVIDIA H200", "step_time_s": 1.0,
                "tokens_per_s_per_gpu": tok, "peak_memory_bytes": gib * 2**30}
    lines = [line("a", "loadmaster", 110, 10), line("a", "torchtitan", 100, 11),
             line("b", "loadmaster", 99, 10), line("b", "torchtitan", 100, 9),
             line("c", "loadmaster", 120, 10), {"plan": "c", "engine": "torchtitan", "error": "OOM"},
             line("c", "plain", 100, 12)]
    v = summary.verdict(runtime_vs_torchtitan.comparison(lines))
    assert v["compared"] == 3 and v["slower"] == ["b"] and v["more_memory"] == ["b"]
    assert v["median_speedup"] == pytest.approx(1.1)


def test_tuner_grid_smoke_runs_the_grid_through_the_bench(tmp_path):
    grid = yaml.safe_load(tuner_grid.GRID.read_text())
    small = tmp_path / "grid.yaml"
    small.write_text(yaml.safe_dump([e for e in grid if e["name"].endswith(("-tuner", "-fsdp-full-mb1"))]))
    assert tuner_grid.main(["--out", str(tmp_path / "out"), "--cpu-smoke", "--plans", str(small),
                            "--budget-s", "240"]) == 0
    lines = kit.read_jsonl(tmp_path / "out" / "bench.jsonl")
    assert {x["name"] for x in lines} == {"t8-tuner", "t8-fsdp-full-mb1"}
    assert tuner_grid.verdict(lines)["speedup_over_torchtitan_default"] is not None


def test_the_8k_grid_holds_the_tuners_current_plan_fastest_and_1_3x_the_torchtitan_default():
    pytest.importorskip("pulp")
    from costmodel import load_cluster, load_model, parse_plan, predict
    from planner.space import SearchSpace, best_kernels
    from planner.tuner import tune
    grid = yaml.safe_load(tuner_grid.GRID.read_text())
    entry = next(e for e in grid if e.get("tuner"))
    model, cluster = load_model(entry["model"]), load_cluster("1xh200")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned, _ = best_kernels(model, cluster, tune(model, cluster, 8, 8192).best.plan, SearchSpace())
        assert parse_plan(entry["plan"]) == tuned.replace(model=None, cluster=None)
        steps = {e["name"]: predict(model, cluster, e["plan"]).step_time_s for e in grid}
    assert min(steps, key=steps.get) == entry["name"]
    assert steps["t8-fsdp-full-mb1"] / steps[entry["name"]] >= 1.3

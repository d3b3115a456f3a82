"""The GPU campaign's files and tools, checked on CPU: plan files, scheduler, crash handling, collection, readers."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from benchmarks import trainer_gpu, tuner_vs_grid
from benchmarks.fp8_loss_curves import write_zipf_tokens
from benchmarks.gpu import budget, campaign, campaign_smoke, collect
from benchmarks.plot_loss_curves import compare

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "benchmarks" / "gpu"

SWEEPS = [GPU / "plans_1gpu.yaml", GPU / "plans_2gpu.yaml"]
GRIDS = [GPU / "tuner_vs_grid_1gpu.yaml", GPU / "tuner_vs_grid_2gpu.yaml", GPU / "tuner_vs_grid_8k.yaml"]


def entries(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())


def test_campaign_plans_load_predict_and_fit_their_groups():
    rows, problems = budget.budget([str(p) for p in SWEEPS + GRIDS], steps=6)
    assert problems == []
    sweep = [r for r in rows if r["file"].startswith("plans_")]
    assert len(sweep) >= 36
    assert {r["model"] for r in sweep} >= {"llama3.2-1b", "gpt3-1.3b", "llama3-8b"}
    ooms = [r for r in rows if not r["feasible"]]
    assert len(ooms) >= 2 and all(r["file"] == "plans_1gpu.yaml" for r in ooms)  # an OOM stops a 2-rank bench
    assert all(150 < r["peak_gib"] < 250 for r in ooms)
    assert budget.print_table(rows, budget.GROUP_LIMIT_S) == []


def test_budget_check_flags_a_misnamed_plan(tmp_path):
    bad = tmp_path / "plans_1gpu.yaml"
    e = entries(GPU / "plans_1gpu.yaml")[0]
    bad.write_text(yaml.safe_dump([{**e, "name": "g1-oom-not-really"}]))
    _, problems = budget.budget([str(bad)], steps=6)
    assert len(problems) == 1 and "named as an OOM" in problems[0]


def test_grid_files_hold_the_tuner_plan_and_eight_alternatives():
    for path in GRIDS:
        es = entries(path)
        assert sum(bool(e.get("tuner")) for e in es) == 1
        assert len(es) - 1 >= 8
        assert any(e["plan"]["zero"] == 3 and e["plan"]["recompute"] == "full" and e["plan"]["micro_batch_size"] == 1
                   for e in es)  # FSDP + full checkpointing, micro-batch 1
        assert len({e["name"] for e in es}) == len(es)


def test_every_plan_name_the_tools_use_exists():
    names = {e["name"] for p in SWEEPS + GRIDS for e in entries(p)}
    used = [n for n, _ in trainer_gpu.TABLE] + [n for pair in trainer_gpu.COMPILE_PAIRS + trainer_gpu.FP8_PAIRS
                                                for n in pair]
    used += [n for job in campaign.JOBS for _, n in job.plain]
    assert sorted(set(used) - names) == []


def test_plain_jobs_name_plans_the_plain_script_accepts():
    from benchmarks import plain_fsdp2
    for job in campaign.JOBS:
        for f, name in job.plain:
            plan = plain_fsdp2.read_entry(str(ROOT / f), name)["plan"]
            plain_fsdp2.check_plan(plan, world=job.gpus)  # SystemExit if not


def test_smoke_plans_keep_the_layout_and_pass_the_checks():
    from costmodel import check_plan, load_model, parse_plan
    tiny = load_model(ROOT / campaign_smoke.SMOKE_MODEL)
    for path in SWEEPS + GRIDS:
        for e in campaign_smoke.smoke_entries(entries(path)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = parse_plan(e["plan"], e["name"])
                check_plan(plan, tiny, None, e["name"])
            orig = next(x for x in entries(path) if x["name"] == e["name"])["plan"]
            for k in ("dp", "tp", "pp", "zero", "recompute"):
                assert e["plan"][k] == orig[k], (e["name"], k)
            for k in ("offload_activation_layers", "offload_state_layers", "fp8_layers"):
                assert bool(e["plan"].get(k)) == bool(orig.get(k)), (e["name"], k)


def _campaign(tmp_path, jobs, budget_s=60.0, lanes=2):
    return campaign.Campaign(jobs, work=tmp_path / "work", out=tmp_path / "out", budget_s=budget_s, lanes=lanes,
                             smoke=True, min_start_s=1.0)


def _stamp(seconds: float) -> list[str]:
    return ["bash", "-c", f"date +%s.%N > {{dir}}/t0; sleep {seconds}; date +%s.%N > {{dir}}/t1"]


def _times(tmp_path, name):
    d = tmp_path / "work" / name
    return float((d / "t0").read_text()), float((d / "t1").read_text())


def test_scheduler_runs_one_gpu_jobs_side_by_side_and_two_gpu_jobs_alone(tmp_path):
    jobs = [campaign.Job("a", 1, 1.0, _stamp(1.0)), campaign.Job("b", 1, 1.0, _stamp(1.0)),
            campaign.Job("c", 2, 1.0, _stamp(0.2))]
    _campaign(tmp_path, jobs).run()
    (a0, a1), (b0, b1), (c0, _) = (_times(tmp_path, n) for n in "abc")
    assert a0 < b1 and b0 < a1  # a and b overlapped
    assert c0 >= max(a1, b1)
    for n in "abc":
        assert json.loads((tmp_path / "work" / n / "status.json").read_text())["state"] == "done"
    assert (tmp_path / "out" / "results.tgz").is_file()
    assert "| c | done |" in (tmp_path / "out" / "summary.md").read_text()


def test_exclusive_job_has_only_light_jobs_beside_it(tmp_path):
    jobs = [campaign.Job("prof", 1, 1.0, _stamp(1.0), exclusive=True), campaign.Job("heavy", 1, 1.0, _stamp(0.1)),
            campaign.Job("lite", 1, 1.0, _stamp(0.1), light=True)]
    _campaign(tmp_path, jobs).run()
    (p0, p1), (h0, _), (l0, _) = (_times(tmp_path, n) for n in ("prof", "heavy", "lite"))
    assert h0 >= p1 and l0 < p1


def test_scheduler_kills_a_job_at_the_deadline(tmp_path):
    t0 = time.monotonic()
    _campaign(tmp_path, [campaign.Job("slow", 1, 1.0, ["sleep", "60"])], budget_s=7.0).run()
    assert time.monotonic() - t0 < 20
    assert json.loads((tmp_path / "work" / "slow" / "status.json").read_text())["state"] == "cut"


FAKE_BENCH = r"""
import json, sys, pathlib, yaml
d = pathlib.Path(sys.argv[1])
done = {json.loads(l)["name"] for l in (d / "bench.jsonl").read_text().splitlines()} \
    if (d / "bench.jsonl").exists() else set()
for e in yaml.safe_load((d / "plans.yaml").read_text()):
    if e["name"] in done:
        continue
    if e["name"] == "p2":
        sys.exit("RuntimeError: simulated crash")  # exits 1, as an uncaught exception would
    with open(d / "bench.jsonl", "a") as f:
        f.write(json.dumps({"name": e["name"], "step_time_s": 1.0}) + "\n")
"""


def test_a_crashing_plan_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    plans = tmp_path / "plans.yaml"
    base = {"global_batch_size": 2, "micro_batch_size": 1, "seq_len": 64, "dp": 1, "tp": 1, "pp": 1, "zero": 3,
            "recompute": "none"}
    plans.write_text(yaml.safe_dump([{"name": f"p{i}", "group": "a", "model": "llama3.2-1b", "plan": base}
                                     for i in (1, 2, 3)]))
    script = tmp_path / "fake_bench.py"
    script.write_text(FAKE_BENCH)
    job = campaign.Job("sweep", 1, 10.0, plans=str(plans), group="a")
    c = _campaign(tmp_path, [job])
    monkeypatch.setattr(c, "command", lambda j: [sys.executable, str(script), str(c.jdir(j))])
    monkeypatch.setattr(campaign, "smoke_entries", lambda es: es)
    c.run()
    lines = [json.loads(x) for x in (tmp_path / "work" / "sweep" / "bench.jsonl").read_text().splitlines()]
    assert [x["name"] for x in lines] == ["p1", "p2", "p3"]
    assert lines[1]["crash"] and not lines[1]["oom"] and "simulated crash" in lines[1]["error"]
    assert lines[1]["plan"] == base and lines[1]["cluster"] == "1xh200"
    assert json.loads((tmp_path / "work" / "sweep" / "status.json").read_text())["state"] == "done"


def test_collect_keeps_measurements_over_crashes_and_completes_oom_lines(tmp_path):
    from costmodel import load_cluster, load_model, parse_plan
    from costmodel.prediction import predict
    es = entries(GPU / "plans_1gpu.yaml")
    oom = next(e for e in es if "oom" in e["name"])
    ok = es[0]
    for call, lines in ((1, [{"name": ok["name"], "crash": True, "error": "x"}]),
                        (2, [{"name": ok["name"], "step_time_s": 1.0, "model": ok["model"], "plan": ok["plan"],
                              "cluster": "1xh200"}, {"name": oom["name"], "model": oom["model"], "oom": True,
                                                     "error": "CUDA out of memory"}]),
                        (3, [{"name": ok["name"], "crash": True, "error": "later crash"}])):
        d = tmp_path / f"call{call}" / "sweep1-a"
        d.mkdir(parents=True)
        (d / "plans.yaml").write_text(yaml.safe_dump([ok, oom]))
        (d / "bench.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        collect.merge([str(tmp_path / f"call{call}")], tmp_path / "merged")
    collect.commit(tmp_path / "merged", tmp_path / "dest", allow_smoke=False)
    out = [json.loads(x) for x in (tmp_path / "dest/benchmarks/data/h200-1gpu-sweep-a.jsonl").read_text().splitlines()]
    assert [x["name"] for x in out] == [ok["name"], oom["name"]]
    assert out[0]["step_time_s"] == 1.0 and not out[0].get("crash")
    for line in out:  # what a replay of the measured runs needs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = predict(load_model(line["model"]), load_cluster(line["cluster"]), parse_plan(line["plan"]))
        assert pred.feasible == (not line.get("oom"))


def test_zipf_token_file_is_deterministic_in_range_and_has_bigram_structure(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    for p in (a, b):
        write_zipf_tokens(p, num_tokens=200_000, vocab_size=128_256, seed=3)
    assert a.read_bytes() == b.read_bytes()
    t = np.fromfile(a, dtype=np.uint32)
    assert t.size == 200_000 and t.max() < 128_256
    counts = np.bincount(t, minlength=128_256)
    assert counts.max() > 50 * np.median(counts[counts > 0])  # heavy head
    pairs = t[:-1].astype(np.int64) * 128_256 + t[1:]
    _, n = np.unique(pairs, return_counts=True)
    assert (n >= 5).sum() > 1000  # repeated bigrams well beyond what independent draws give


def test_loss_comparison_uses_the_tail_and_the_two_percent_target():
    bf16 = {s: 10.0 - s * 0.01 for s in range(1, 301)}
    close = compare({"bf16": bf16, "fp8": {s: v * 1.01 for s, v in bf16.items()}}, tail=20)
    far = compare({"bf16": bf16, "fp8": {s: v * 1.03 for s, v in bf16.items()}}, tail=20)
    assert close["within_target"] and abs(close["rel_diff"] - 0.01) < 1e-9 and close["tail_steps"] == 20
    assert not far["within_target"]


def _grid_line(name, tps, **kw):
    plan = {"global_batch_size": 32, "seq_len": 4096, "micro_batch_size": 1, "dp": 1}
    return {"name": name, "model": "llama3.2-1b", "plan": plan, "tokens_per_s_per_gpu": tps, "step_time_s": 1.0,
            "peak_memory_bytes": 2**30, **kw}


def test_tuner_verdict_within_three_percent_of_the_measured_best():
    ok = [_grid_line("t1-a", 100.0), _grid_line("t1-tuner", 97.5, tuner=True)]
    bad = [_grid_line("t1-a", 100.0), _grid_line("t1-tuner", 96.0, tuner=True)]
    oom = [_grid_line("t1-a", 100.0), _grid_line("t1-tuner", None, oom=True)]
    assert tuner_vs_grid.case_report("t1", ok)[1] is True
    assert tuner_vs_grid.case_report("t1", bad)[1] is False
    assert tuner_vs_grid.case_report("t1", oom)[1] is False


def test_trainer_table_knob_coverage():
    plans = {e["name"]: e["plan"] for p in SWEEPS for e in entries(p)}
    covered = set().union(*(trainer_gpu.knobs_of(plans[n]) for n, _ in trainer_gpu.TABLE))
    assert covered >= set(trainer_gpu.KNOBS)
    assert len(trainer_gpu.TABLE) >= 12


def test_plain_fsdp2_trains_a_tiny_tied_model_on_cpu(tmp_path):
    plans = tmp_path / "p.yaml"
    model = tmp_path / "tiny.yaml"
    model.write_text(yaml.safe_dump({"name": "t", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
                                     "tie_word_embeddings": True}))
    plans.write_text(yaml.safe_dump([{"name": "x", "model": str(model), "plan": {
        "global_batch_size": 2, "micro_batch_size": 1, "seq_len": 16, "dp": 1, "tp": 1, "pp": 1, "zero": 3,
        "recompute": "full"}}]))
    out = tmp_path / "plain.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/plain_fsdp2.py"), "--plans", str(plans), "--name", "x",
                        "--steps", "3", "--warmup", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    line = json.loads(out.read_text())
    assert line["steps_measured"] == 2 and line["step_time_s"] > 0
    assert abs(line["losses"][0] - np.log(128)) < 0.3  # starts near uniform over the vocabulary


def test_committed_results_count_as_measured(tmp_path, monkeypatch):
    plans = tmp_path / "plans.yaml"
    base = {"global_batch_size": 2, "micro_batch_size": 1, "seq_len": 64, "dp": 1, "tp": 1, "pp": 1, "zero": 3,
            "recompute": "none"}
    plans.write_text(yaml.safe_dump([{"name": f"p{i}", "group": "a", "model": "llama3.2-1b", "plan": base}
                                     for i in (1, 2)]))
    (tmp_path / "done.jsonl").write_text(json.dumps({"name": "p1", "step_time_s": 1.0}) + "\n"
                                         + json.dumps({"name": "other", "step_time_s": 1.0}) + "\n")
    (tmp_path / "sdpa.json").write_text("{}")
    sweep = campaign.Job("sweep", 1, 10.0, plans=str(plans), group="a", committed=str(tmp_path / "done.jsonl"))
    check = campaign.Job("check", 1, 10.0, ["true"], committed=str(tmp_path / "sdpa.json"))
    fresh = campaign.Job("fresh", 1, 10.0, ["true"], committed=str(tmp_path / "missing.json"))
    c = _campaign(tmp_path, [sweep, check, fresh])
    c.seed_committed()
    assert [json.loads(x)["name"] for x in (c.jdir(sweep) / "bench.jsonl").read_text().splitlines()] == ["p1"]
    assert c.status(sweep)["state"] == "pending" and c.status(check)["state"] == "done"
    assert c.status(fresh)["state"] == "pending"


def test_two_gpu_profile_fields_merge_into_the_full_profile():
    from costmodel.hardware import parse_profile
    full = yaml.safe_load((ROOT / "profiles" / "h200.yaml").read_text())
    two = yaml.safe_load((ROOT / "profiles" / "h200.yaml").read_text())
    two.update(intra_node={"source": "measured on 2 GPUs", "curves": {"all_reduce": {2: [[2**20, 321.0]]}}},
               source="measured on 2 GPU(s)")
    two["constants"] = {**two["constants"], "comm_compute_slowdown": {"value": 0.31, "source": "measured, 2 GPUs"},
                        "h2d_compute_slowdown": {"value": 0.99, "source": "measured, 2 GPUs"}}
    merged = collect.merge_two_gpu_fields(full, two)
    prof = parse_profile(merged, "merged")
    assert prof.intra_node.curves == {"all_reduce": {2: [[2**20, 321.0]]}}
    assert prof.const("comm_compute_slowdown") == 0.31
    assert prof.const("h2d_compute_slowdown") == parse_profile(full, "full").const("h2d_compute_slowdown")
    assert collect.merge_two_gpu_fields(merged, two)["source"] == merged["source"]  # merging twice: same source

"""The measurement scripts of benchmarks/, checked on CPU: plan files, the GPU job driver, readers and verdicts."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks import trainer_gpu, tuner_vs_grid
from benchmarks.gpu.fp8_schedule import write_zipf_tokens
from benchmarks.gpu import run as gpu_run
from benchmarks.plot_loss_curves import compare

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "benchmarks" / "gpu"

SWEEPS = [GPU / "plans_1gpu.yaml", GPU / "plans_2gpu.yaml"]
GRIDS = [GPU / "tuner_vs_grid_1gpu.yaml", GPU / "tuner_vs_grid_2gpu.yaml"]


def entries(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", SWEEPS + GRIDS, ids=lambda p: p.name)
def test_measurement_plans_pass_the_plan_check_and_are_predicted(path):
    from costmodel import load_model, parse_plan
    from costmodel.prediction import predict
    cluster = "1xh200" if "1gpu" in path.name else "2xh200"
    for e in entries(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = predict(load_model(ROOT / e["model"] if str(e["model"]).endswith(".yaml") else e["model"]),
                           e.get("cluster", cluster), parse_plan(e["plan"], e["name"]))
        assert pred.step_time_s > 0, e["name"]
        assert (not pred.feasible) == e["name"].startswith("g1-oom-"), e["name"]   # the OOM plans are named so


def test_every_plan_name_the_trainer_table_uses_exists():
    names = {e["name"] for p in SWEEPS + GRIDS for e in entries(p)}
    used = [n for n, _ in trainer_gpu.TABLE] + [n for pair in trainer_gpu.COMPILE_PAIRS + trainer_gpu.FP8_PAIRS
                                                for n in pair]
    assert sorted(set(used) - names) == []


def test_gpu_driver_runs_jobs_in_order_within_the_budget(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_run.JOBS, "ok", (["python", "-c", "print('done {out}')"], 30, "prints"))
    monkeypatch.setitem(gpu_run.JOBS, "slow", (["python", "-c", "import time; time.sleep(30)"], 1.5, "sleeps"))
    monkeypatch.setattr(gpu_run, "install_wheels", lambda: None)
    rows = gpu_run.run(["ok", "slow", "ok"], tmp_path, budget_s=14)
    assert [(job, code) for job, code, _, _ in rows] == [("ok", 0), ("slow", None), ("ok", 0)]
    assert rows[1][2] < 5                       # stopped at its own cap
    assert f"done {tmp_path / 'ok'}" in (tmp_path / "ok" / "log.txt").read_text()
    rows = gpu_run.run(["ok"], tmp_path, budget_s=5)   # under 10 s left: skipped
    assert rows[0][1] is None and rows[0][2] == 0
    monkeypatch.setitem(gpu_run.JOBS, "slow", (["python", "-c", "import time; time.sleep(30)"], 60, "sleeps"))
    rows = gpu_run.run(["slow:1.5"], tmp_path, budget_s=30)   # a cap given after the name wins
    assert rows[0][1] is None and rows[0][2] < 5


def test_gpu_driver_packs_every_job_into_one_archive(tmp_path, monkeypatch):
    import tarfile
    monkeypatch.setitem(gpu_run.JOBS, "ok", (["python", "-c", "open('{out}/r.json', 'w').write('1')"], 30, "writes"))
    monkeypatch.setattr(gpu_run, "install_wheels", lambda: None)
    assert gpu_run.main(["--out", str(tmp_path), "--budget-s", "60", "--pack", "ok"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["results.tar.gz"]
    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["ok", "ok/log.txt", "ok/r.json"]


def test_gpu_driver_refuses_an_unknown_job(capsys):
    assert gpu_run.main(["--out", "x", "nope"]) == 2
    assert "unknown job or cap nope" in capsys.readouterr().err
    assert gpu_run.main(["--out", "x", "profile:soon"]) == 2
    assert "unknown job or cap profile:soon" in capsys.readouterr().err


def test_grid_files_hold_the_tuner_plan_and_eight_alternatives():
    for path in GRIDS:
        es = entries(path)
        assert sum(bool(e.get("tuner")) for e in es) == 1
        assert len(es) - 1 >= 8
        assert any(e["plan"]["zero"] == 3 and e["plan"]["recompute"] == "full" and e["plan"]["micro_batch_size"] == 1
                   for e in es)  # FSDP + full checkpointing, micro-batch 1
        assert len({e["name"] for e in es}) == len(es)


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

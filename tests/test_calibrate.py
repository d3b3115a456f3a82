"""`loadmaster calibrate`: synthetic runs made with a profile whose constants are perturbed by known amounts must
give those constants back; bad input is one line and exit code 2."""
import json
import warnings

import pytest
import yaml

from costmodel import load_cluster, load_profile, parse_plan
from costmodel.calibration import KNOBS, calibrate, refit_fragmentation
from costmodel.kernels import plan_kernels
from costmodel.prediction import predict
from costmodel.runs import read_runs

TRUTH = {"gemm.max_eff": 0.70, "attention.max_eff": 0.45}


def _plan(**kw):
    return {"global_batch_size": 8, "micro_batch_size": 1, "seq_len": 4096, "dp": 1, "tp": 1, "pp": 1, "zero": 3,
            "recompute": "none", **kw}


RUNS = [  # (model, cluster, plan): shapes, sequence lengths, compile and layouts vary the shares of the terms
    ("llama3.2-1b", "1xh200", _plan(micro_batch_size=2, seq_len=2048)),
    ("llama3.2-1b", "1xh200", _plan(seq_len=8192, recompute="full")),
    ("llama3.2-1b", "1xh200", _plan(compile=True, recompute="selective")),
    ("gpt3-1.3b", "2xh200", _plan(dp=2, micro_batch_size=2)),
    ("gpt3-1.3b", "2xh200", _plan(tp=2, global_batch_size=4)),
    ("gpt3-1.3b", "2xh200", _plan(pp=2, zero=2)),
    ("llama3-8b", "2xh200", _plan(dp=2, recompute="full", global_batch_size=4)),
    ("llama3.2-3b", "4xh200", _plan(dp=2, tp=2, seq_len=8192, global_batch_size=4)),
    ("llama3-8b", "4xh200", _plan(dp=4, recompute="selective", compile=True, seq_len=8192)),
    ("qwen2.5-7b", "8xh200", _plan(dp=8, global_batch_size=16, zero=2, recompute="full")),
    ("llama3.2-1b", "1xh200", _plan(recompute="selective", seq_len=2048, micro_batch_size=4, global_batch_size=16)),
    ("llama3.2-1b", "1xh200", _plan(compile=True, seq_len=2048, micro_batch_size=4, global_batch_size=16)),
]


def _truth(**values):
    prof = load_profile("h200")
    for k, v in values.items():
        prof = KNOBS[k].set(prof, v)
    return prof


def _bench_lines(truth, noise=()) -> list[dict]:
    """launcher.runtime.bench lines whose step times are the truth profile's predictions (times 1 + noise)."""
    lines = []
    for i, (model, cluster, plan) in enumerate(RUNS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = predict(model, cluster, parse_plan(plan), profile=truth.with_cluster(load_cluster(cluster)))
        factor = 1 + (noise[i] if noise else 0.0)
        lines.append({"name": f"run{i}", "model": model, "cluster": cluster, "plan": plan, "oom": False,
                      "kernels": plan_kernels(parse_plan(plan)),   # as launcher.runtime.bench records them
                      "step_time_s": pred.step_time_s * factor, "peak_memory_bytes": pred.peak_memory_bytes})
    return lines


def _write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_recovers_constants_perturbed_by_known_amounts(tmp_path):
    runs, _ = read_runs([_write(tmp_path / "bench.jsonl", _bench_lines(_truth(**TRUTH)))])
    cal = calibrate(runs, load_profile("h200"))
    for k, v in TRUTH.items():
        assert cal.fitted[k][1] == pytest.approx(v, rel=1e-3), k
    s = cal.summary()
    assert s["before_median_abs_err"] > 0.05
    assert s["after_max_abs_err"] < 1e-3 and s["loo_max_abs_err"] < 1e-3
    # no run uses float8 or offloads: those constants cannot be fitted and say so
    assert "no run's predicted step time depends on it" in cal.unchanged["fp8_gemm.max_eff"]
    assert cal.profile.fp8_gemm == load_profile("h200").fp8_gemm


def test_noisy_runs_give_the_constants_within_their_standard_error(tmp_path):
    noise = [0.01, -0.01, 0.005, -0.005, 0.0, 0.01, -0.01, 0.005, -0.005, 0.0, 0.01, -0.01]
    runs, _ = read_runs([_write(tmp_path / "bench.jsonl", _bench_lines(_truth(**TRUTH), noise))])
    cal = calibrate(runs, load_profile("h200"), knobs=list(TRUTH))
    for k, v in TRUTH.items():
        before, after, se = cal.fitted[k]
        assert se is not None and abs(after - v) < 3 * se + 1e-3, (k, after, se)
    s = cal.summary()
    assert s["after_max_abs_err"] < 0.03 and s["loo_median_abs_err"] < 0.03


def test_cli_writes_a_profile_that_loads_and_fits_the_runs(tmp_path, run_cli):
    bench = _write(tmp_path / "bench.jsonl", _bench_lines(_truth(**TRUTH)))
    out = tmp_path / "h200-cal.yaml"
    code, stdout, err = run_cli("calibrate", bench, "--profile", "h200", "-o", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["summary"]["after_max_abs_err"] < 1e-3
    prof = load_profile(out)
    assert prof.name == "h200-cal"
    assert prof.source.startswith("calibrated ") and "run0" in prof.source and str(bench) in prof.source
    assert prof.gemm.max_eff == pytest.approx(0.70, rel=1e-3)
    assert prof.attention.max_eff == pytest.approx(0.45, rel=1e-3)
    model, cluster, plan = RUNS[0]
    line = json.loads(bench.read_text().splitlines()[0])
    assert predict(model, cluster, plan, profile=prof).step_time_s == pytest.approx(line["step_time_s"], rel=1e-3)


def test_reads_a_run_directory_with_a_detected_cluster_and_an_out_of_memory_bench_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    plan = _plan(micro_batch_size=2, seq_len=2048)
    (run / "plan.yaml").write_text(yaml.safe_dump(plan))
    (run / "summary.json").write_text(json.dumps({"step_time_s": 0.3, "peak_memory_bytes": 3e10,
                                                  "peak_reserved_bytes": 3.3e10, "model": "llama3.2-1b",
                                                  "cluster": "detected-h200", "world_size": 1}))
    oom = _write(tmp_path / "oom.jsonl", [
        {"name": "big", "model": "llama3-8b", "cluster": "1xh200", "oom": True, "error": "CUDA out of memory",
         "plan": _plan(micro_batch_size=8)},
        {"name": "bad", "model": "llama3-8b", "error": "SpecError: tp 3 does not divide", "plan": _plan()},
        {"name": "old", "model": "llama3.2-1b", "cluster": "1xh200", "step_time_s": 1.0, "peak_memory_bytes": 3e10,
         "plan": _plan(), "superseded": "measured with an older trainer; see old-v2"}])
    runs, skipped = read_runs([run, oom])
    assert [r.name for r in runs] == ["run", "big"]
    assert runs[0].cluster.gpu == "h200" and runs[0].cluster.num_gpus == 1
    assert runs[0].plan.micro_batch_size == 2 and runs[1].oom
    assert len(skipped) == 2 and "bad" in skipped[0] and "old" in skipped[1] and "superseded" in skipped[1]
    assert refit_fragmentation(runs) == pytest.approx(0.1)


def test_out_of_memory_runs_are_reported_as_called_or_missed(tmp_path):
    lines = _bench_lines(_truth(**TRUTH))
    lines.append({"name": "big", "model": "llama3-8b", "cluster": "1xh200", "oom": True,
                  "plan": _plan(micro_batch_size=8, global_batch_size=8)})
    runs, _ = read_runs([_write(tmp_path / "bench.jsonl", lines)])
    cal = calibrate(runs, load_profile("h200"), knobs=list(TRUTH))
    assert cal.oom_runs == [{"name": "big", "called": True}]


def _one_line_error(run_cli, *args) -> str:
    code, out, err = run_cli("calibrate", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return " ".join(lines[0].split())


def test_no_runs_is_a_one_line_error(run_cli):
    assert "give at least one run" in _one_line_error(run_cli)


def test_a_file_that_is_not_json_lines_names_the_line(tmp_path, run_cli):
    bad = tmp_path / "bench.jsonl"
    bad.write_text(json.dumps(_bench_lines(_truth())[0]) + "\n{not json\n")
    assert f"{bad}:2: <line>: is not JSON" in _one_line_error(run_cli, bad)


def test_a_missing_file_is_a_one_line_error(tmp_path, run_cli):
    assert "no such file or run directory" in _one_line_error(run_cli, tmp_path / "nothing.jsonl")


def test_a_run_with_an_unknown_model_names_it(tmp_path, run_cli):
    line = dict(_bench_lines(_truth())[0], model="llama9-1t")
    bad = _write(tmp_path / "bench.jsonl", [line])
    assert "'llama9-1t' is neither a model file nor a shipped model recipe" in _one_line_error(run_cli, bad)


def test_fewer_runs_than_constants_is_refused_with_the_fix(tmp_path, run_cli):
    one = _write(tmp_path / "bench.jsonl", _bench_lines(_truth(**TRUTH))[:1])
    msg = _one_line_error(run_cli, one, "--params", "gemm.max_eff,elementwise_efficiency")
    assert "1 timed run(s) cannot determine 2 constants" in msg
    # the fix names the one constant that moves the run's predicted time most
    assert msg.endswith("fit at most 1 with --params gemm.max_eff") or \
        msg.endswith("fit at most 1 with --params elementwise_efficiency")


def test_an_unknown_constant_lists_the_known_ones(tmp_path, run_cli):
    bench = _write(tmp_path / "bench.jsonl", _bench_lines(_truth()))
    msg = _one_line_error(run_cli, bench, "--params", "gemm.max_eff,warp_speed")
    assert "unknown constant 'warp_speed'" in msg and "attention.max_eff" in msg

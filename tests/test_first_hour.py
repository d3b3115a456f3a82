"""The first hour, one test per case a new user hit: every verb answers with a result or one `error:` line
and exit code 2 — never a traceback — and the output fits the terminal. (Exports in the engines' own parsers
are in test_export.py; launch's GPU checks, step lines, TensorBoard and resume in test_launch*.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from costmodel import SpecError, load_model, load_plan
from costmodel.errors import MAX_FILE_BYTES, MAX_YAML_ALIASES

ROOT = Path(__file__).resolve().parent.parent
LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                "bos_token_id": 128000, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
                "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
                "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "head_dim": 64,
                "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256,
                "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                "torch_dtype": "bfloat16", "transformers_version": "4.45.0", "use_cache": True}


def cli(*args, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """The installed entry point's code in a fresh process (what a user's shell runs)."""
    return subprocess.run([sys.executable, "-c", "from planner.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    return lines[0]


def test_plan_top_k_0_is_a_user_error(run_cli):
    code, _, err = run_cli("plan", "llama3-8b", "-c", "8xh100", "-b", "8", "-s", "128", "-k", "0")
    assert code == 2 and "--top-k is 0; use a value 1 or more" in one_error_line(err)


@pytest.mark.parametrize("flag, value", [("--time-limit", "-1"), ("--gap", "2"), ("--max-fp8-fraction", "1.5"),
                                         ("--tp", "0"), ("--seq-len", "0"), ("--zero", "5"), ("--recompute", "all")])
def test_every_numeric_plan_flag_is_validated(run_cli, flag, value):
    code, _, err = run_cli("plan", "llama3-8b", "-c", "8xh100", "-b", "8", "-s", "128", flag, value)
    assert code == 2 and flag in one_error_line(err)


def test_a_yaml_alias_bomb_is_refused_at_once_with_a_short_message(run_cli, tmp_path):
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\nglobal_batch_size: *i\n")
    t0 = time.perf_counter()
    code, _, err = run_cli("predict", "llama3-8b", "-c", "8xh100", "--plan", bomb)
    assert code == 2 and time.perf_counter() - t0 < 5
    line = one_error_line(err)
    assert f"more than {MAX_YAML_ALIASES} YAML aliases" in line and len(line) < 300


def test_a_nested_value_is_quoted_cut_to_a_readable_length(tmp_path):
    plan = tmp_path / "p.yaml"
    nested = [[list(range(50)) for _ in range(20)] for _ in range(20)]  # 20,000 numbers, no YAML alias
    plan.write_text(yaml.safe_dump({"global_batch_size": nested, "micro_batch_size": 1}))
    with pytest.raises(SpecError) as e:
        load_plan(plan)
    assert "global_batch_size" in str(e.value) and len(str(e.value)) < 300


def test_a_file_larger_than_any_spec_is_refused_before_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(SpecError, match="more than the .* a spec file may be"):
        load_plan(big)


def test_calibrate_without_scipy_says_what_to_install():
    code = ("import sys; sys.modules['scipy'] = None; from planner.cli import main; sys.argv = ['loadmaster', "
            f"'calibrate', {str(ROOT / 'benchmarks/data/h200-1gpu-anatomy.json')!r}]; main()")
    runs = [ROOT / "benchmarks" / "data" / "h200-1gpu-grid.jsonl"]
    code = code.replace(repr(str(ROOT / "benchmarks/data/h200-1gpu-anatomy.json")), repr(str(runs[0])))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 2 and "pip install scipy" in one_error_line(res.stderr)


def test_scipy_is_installed_by_the_readme_main_command():
    deps = " ".join(__import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert "scipy" in deps and "pip install -e . &&" in (ROOT / "README.md").read_text()


def test_shipped_plan_names_work_in_predict_explain_and_export(run_cli):
    for args in (("predict", "llama3.1-8b", "-c", "8xh100-96g", "--plan", "llama3-8b-fsdp", "--json"),
                 ("explain", "llama3.1-8b", "-c", "8xh100-96g", "--plan", "llama3-8b-fsdp", "--json"),
                 ("export", "llama3-8b-fsdp", "--to", "megatron", "--json")):
        code, out, err = run_cli(*args)
        assert code == 0, (args, err)
        json.loads(out)


def test_torchtitans_reference_recipe_is_predicted_to_fit(run_cli):
    code, out, _ = run_cli("predict", "llama3.1-8b", "-c", "8xh100-96g", "--plan", "llama3-8b-fsdp", "--json")
    assert code == 0 and json.loads(out)["feasible"]


def test_a_plan_written_from_a_config_json_launches_from_another_directory(tmp_path):
    snapshot = tmp_path / "hf" / "Llama-3.2-1B"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    res = cli("plan", "hf/Llama-3.2-1B", "-c", "8xh100", "-b", "16", "-s", "2048", "--time-limit", "20",
              "-o", "plan.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    written = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert written["model"] == str(snapshot) and written["cluster"] == "8xh100"  # absolute: loads anywhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = cli("launch", tmp_path / "plan.yaml", "--dry-run", "--json", cwd=elsewhere)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["model"] == "Llama-3.2-1B"


def test_plan_job_fills_model_cluster_batch_and_sequence(run_cli, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("global_batch_size: 16\nseq_len: 2048\nmodel: llama3.2-1b\ncluster: 8xh100\n")
    code, out, err = run_cli("plan", "--job", job, "--time-limit", "20", "--json")
    assert code == 0, err
    best = json.loads(out)["best"]["plan"]
    assert (best["model"], best["cluster"], best["global_batch_size"], best["seq_len"]) == \
        ("llama3.2-1b", "8xh100", 16, 2048)
    bare = tmp_path / "bare.yaml"
    bare.write_text("global_batch_size: 16\nseq_len: 2048\n")
    code, _, err = run_cli("plan", "--job", bare)
    assert code == 2 and "give MODEL and --cluster (the job names neither)" in one_error_line(err)


def test_a_hugging_face_snapshot_folder_loads_with_its_math_keys_and_one_warning(tmp_path):
    folder = tmp_path / "Llama-3.2-1B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**LLAMA_CONFIG, "sliding_window": 4096}))
    with pytest.warns(UserWarning) as caught:
        m = load_model(folder)
    assert (m.name, m.rope_type, m.rope_scaling["factor"], m.tie_word_embeddings, m.attention_bias) == \
        ("Llama-3.2-1B", "llama3", 32.0, True, False)
    assert m == load_model("llama3.2-1b").__class__(**{**load_model("llama3.2-1b").__dict__, "name": m.name})
    ignored = [str(w.message) for w in caught if "ignoring config.json keys" in str(w.message)]
    assert len(ignored) == 1 and "sliding_window=4096" in ignored[0] and "mlp_bias=False" in ignored[0]
    assert "torch_dtype" not in ignored[0]  # metadata is dropped without a word


def test_qwen2_config_json_gets_its_qkv_biases(tmp_path):
    cfg = {**{k: v for k, v in LLAMA_CONFIG.items() if k not in ("attention_bias", "rope_scaling", "head_dim")},
           "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning):
        m = load_model(tmp_path / "config.json")
    assert m.qkv_bias and not m.attention_bias
    assert m.params_per_block() - load_model("llama3.2-1b").params_per_block() == \
        int(m.head_dim) * (m.num_attention_heads + 2 * m.kv_heads)


def test_a_hub_id_loads_from_the_cache_and_offline_misses_say_how_to_fix_it(tmp_path):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    snap = cache / "models--meta-llama--Llama-3.2-1B" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    (cache / "models--meta-llama--Llama-3.2-1B" / "refs").mkdir()
    (cache / "models--meta-llama--Llama-3.2-1B" / "refs" / "main").write_text("abc123")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    res = cli("predict", "meta-llama/Llama-3.2-1B", "-c", "8xh100", "--plan", "llama3-8b-fsdp", "--json", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    res = cli("predict", "meta-llama/Llama-3.3-70B", "-c", "8xh100", "--plan", "llama3-8b-fsdp", env=env)
    assert res.returncode == 2
    assert "neither in the Hugging Face cache nor reachable on the hub" in one_error_line(res.stderr)


def test_predict_json_errors_are_json(run_cli):
    code, out, err = run_cli("predict", "nonesuch", "-c", "8xh100", "--plan", "llama3-8b-fsdp", "--json")
    assert code == 2 and one_error_line(err)
    d = json.loads(out)
    assert d["exit_code"] == 2 and "nonesuch" in d["error"]


def test_version(run_cli):
    from importlib.metadata import version
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"loadmaster {version('loadmaster')}"


@pytest.mark.parametrize("verb", ["plan", "predict", "explain", "launch", "export", "calibrate", "profile", "verify"])
def test_help_has_no_typer_type_metavars(run_cli, verb):
    code, out, _ = run_cli(verb, "--help")
    assert code == 0
    for bad in ("<bool>", "<str>", "<int>", "<float>", "{model}"):
        assert bad not in out, f"{verb} --help shows {bad}"


def test_readme_names_the_notebook_extra_and_the_to_frame_hint_one_that_exists():
    extras = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    readme = (ROOT / "README.md").read_text()
    assert "notebook" in extras and ".[notebook]" in readme
    api = (ROOT / "planner" / "api.py").read_text()
    hint = api[api.index("to_frame needs"):].split(")")[0]
    assert "pip install pandas" in hint and all(x in extras for x in ("notebook",) if f"[{x}]" in hint)


@pytest.mark.parametrize("columns", [80, 100])
def test_the_plan_table_shows_every_column_and_value_whole(columns):
    # a search that ends at its gap well inside the limit, so that both runs below find the same plans
    job = ("llama3-70b", "-c", "8x8xh100", "-b", "64", "-s", "8192", "--pp", "4", "--tp", "8", "--time-limit", "300")
    res = cli("plan", *job, env={"COLUMNS": str(columns)})
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "…" not in out and max(len(ln) for ln in out.splitlines()) <= columns
    for header in ("layout", "mbs", "zero", "ckpt", "offl", "fp8", "cmp", "sync", "step", "tok/s/GPU", "MFU",
                   "peak", "free"):
        assert f" {header} " in out or f"{header}\n" in out, header
    res_json = cli("plan", *job, "--json")
    assert "the gap asked for" in json.loads(res_json.stdout)["summary"]
    for cand in json.loads(res_json.stdout)["top"]:
        assert f"{cand['prediction']['step_time_s']:,.3f} s" in out  # every step time, whole


def test_the_solver_banner_reaches_neither_stdout_nor_stderr():
    res = cli("plan", "llama3-70b", "-c", "8x8xh100", "-b", "64", "-s", "8192", "--pp", "4", "--time-limit", "30",
              "--json")
    assert res.returncode == 0
    assert "HiGHS" not in res.stdout + res.stderr
    json.loads(res.stdout)


def test_written_plans_keep_per_stage_lists_on_one_line():
    plan = load_plan(ROOT / "recipes" / "plans" / "llama3-70b-tp-pp-ckpt.yaml")
    text = plan.to_yaml()
    assert "recompute_layers: [19, 16, 14, 12]\n" in text and "layers_per_stage: [19, 21, 21, 19]\n" in text
    assert load_plan(yaml.safe_load(text)) == plan


def test_calibrate_refuses_to_write_a_worse_profile_unless_forced(run_cli, tmp_path, monkeypatch):
    import costmodel.calibration as cal_mod
    real = cal_mod.calibrate

    def worse(*args, **kwargs):  # a refit that predicts the runs worse than its start
        cal = real(*args, **kwargs)
        for r in cal.runs:
            r.after_s = r.measured_s * 1.5
        return cal
    monkeypatch.setattr("planner.cli_calibrate.calibrate", worse)
    runs = [str(p) for p in [ROOT / "benchmarks" / "data" / "h200-1gpu-grid.jsonl"]]
    out = tmp_path / "p.yaml"
    code, _, err = run_cli("calibrate", *runs, "-o", out)
    assert code == 2 and "not written: the refit profile predicts the runs worse" in one_error_line(err)
    assert not out.exists()
    code, _, err = run_cli("calibrate", *runs, "-o", out, "--force")
    assert code == 0 and out.is_file(), err


def test_a_gpu_name_too_long_for_the_file_system_is_a_user_error(tmp_path):
    from costmodel import load_cluster
    cluster = tmp_path / "c.yaml"
    cluster.write_text(f"nodes: 1\ngpus_per_node: 4\ngpu: {'x' * 300}\n")
    with pytest.raises(SpecError, match="gpu: 'x+\\.\\.\\.x+': is neither a file nor a shipped profile"):
        load_cluster(cluster)

"""Loading and validating model, cluster, job and plan files."""
import json

import pytest
import yaml

from costmodel import SpecError, check_plan, load_cluster, load_job, load_model, load_plan
from costmodel.hardware import load_profile, parse_profile
from costmodel.specs import shipped

LLAMA3_8B_CONFIG = {  # meta-llama/Meta-Llama-3-8B config.json, as published
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0",
    "use_cache": True, "vocab_size": 128256}

PLAN = {"global_batch_size": 16, "micro_batch_size": 2, "seq_len": 4096, "dp": 8, "tp": 1, "pp": 1, "zero": 3,
        "recompute": "none"}


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))
    return p


def test_every_shipped_recipe_and_profile_loads():
    assert len(shipped("models")) >= 16 and len(shipped("clusters")) >= 10
    for n in shipped("models"):
        assert load_model(n).num_params() > 1e9
    for n in shipped("clusters"):
        assert load_cluster(n).num_gpus >= 1
    for n in shipped("jobs"):
        load_job(n)
    for n in ("h100-sxm", "h200", "a100-80g", "a100-40g", "l4", "b200"):
        p = load_profile(n)
        assert p.source and p.memory_gib > 10 and 0 < p.gemm(1e12) < 1


def test_param_counts_match_published_sizes():
    expected = {"llama3-8b": 8.03e9, "llama3-70b": 70.55e9, "llama3-405b": 405.85e9, "llama3.2-1b": 1.24e9,
                "mistral-7b": 7.24e9, "qwen2.5-7b": 7.62e9, "llama2-7b": 6.74e9}
    for name, n in expected.items():
        assert load_model(name).num_params() == pytest.approx(n, rel=0.005)


def test_real_hf_config_json_loads_like_the_recipe(tmp_path):
    p = write(tmp_path, "config.json", LLAMA3_8B_CONFIG)
    m, ref = load_model(p), load_model("llama3-8b")
    assert (m.hidden_size, m.kv_heads, m.head_dim, m.vocab_size) == (4096, 8, 128, 128256)
    assert m.num_params() == ref.num_params()


@pytest.mark.parametrize("mutation, key, fragment", [
    ({"hidden_size": "4096"}, "hidden_size", "must be an integer"),
    ({"hidden_size": 4096.5}, "hidden_size", "must be an integer"),
    ({"num_layerz": 3}, "num_layerz", "unknown model key"),
    ({"num_key_value_heads": 5}, "num_key_value_heads", "does not divide"),
    ({"vocab_size": 0}, "vocab_size", "positive"),
])
def test_bad_model_file_names_file_key_and_fix(tmp_path, mutation, key, fragment):
    data = yaml.safe_load(open(load_model.__globals__["resolve"]("llama3-8b", "models")))
    p = write(tmp_path, "m.yaml", {**data, **mutation})
    with pytest.raises(SpecError) as e:
        load_model(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg and fragment in msg and "\n" not in msg


def test_missing_model_key(tmp_path):
    data = yaml.safe_load(open(load_model.__globals__["resolve"]("llama3-8b", "models")))
    del data["vocab_size"]
    with pytest.raises(SpecError, match="vocab_size: missing"):
        load_model(write(tmp_path, "m.yaml", data))


@pytest.mark.parametrize("text, fragment", [
    ("hidden_size: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "not a mapping"), ("", "not a mapping"),
])
def test_non_mapping_or_broken_yaml(tmp_path, text, fragment):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    with pytest.raises(SpecError, match=fragment):
        load_model(p)


def test_binary_file_is_a_spec_error(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(SpecError, match="UTF-8"):
        load_model(p)


def test_unknown_recipe_name_suggests_close_ones():
    with pytest.raises(SpecError, match="did you mean llama3-8b"):
        load_model("llama3-8bb")


def test_cluster_with_unknown_gpu(tmp_path):
    p = write(tmp_path, "c.yaml", {"nodes": 1, "gpus_per_node": 8, "gpu": "h900"})
    with pytest.raises(SpecError, match=r"c.yaml: gpu: 'h900'"):
        load_cluster(p)


def test_plan_checks(tmp_path):
    m, c = load_model("llama3-8b"), load_cluster("8xh100")
    check_plan(load_plan(PLAN), m, c)
    cases = [({"tp": 3, "dp": 8}, "tp", "does not divide num_attention_heads"),
             ({"dp": 4}, "dp", "has 8 GPUs"),
             ({"global_batch_size": 20}, "global_batch_size", "not a multiple"),
             ({"zero": 4}, "zero", "must be one of"),
             ({"recompute": "some"}, "recompute", "must be one of"),
             ({"pp": 2, "dp": 4, "global_batch_size": 8}, "micro_batch_size", "cannot fill 2 pipeline stages"),
             ({"pp": 2, "dp": 4, "layers_per_stage": [20, 10]}, "layers_per_stage", "sums to 30"),
             ({"recompute_layers": 40, "recompute": "full"}, "recompute_layers", "more than the 32 blocks"),
             ({"micro_batch_size": -1}, "micro_batch_size", "positive")]
    for change, key, fragment in cases:
        p = write(tmp_path, "plan.yaml", {**PLAN, **change})
        with pytest.raises(SpecError) as e:
            check_plan(load_plan(p), m, c)
        assert f"plan.yaml: {key}" in str(e.value) and fragment in str(e.value), str(e.value)


def test_plan_round_trips_through_yaml(tmp_path):
    plan = load_plan({**PLAN, "fp8_layers": [4], "compile": True})
    again = load_plan(write(tmp_path, "p.yaml", yaml.safe_load(plan.to_yaml())))
    assert again == plan and again.per_stage("fp8_layers", 32) == [4]


def test_profile_validation(tmp_path):
    data = load_profile("h200").to_dict()
    data["gemm"]["max_eff"] = 1.5
    with pytest.raises(SpecError, match="gemm.max_eff"):
        parse_profile(data, "p.yaml")
    data = load_profile("h200").to_dict()
    data["intra_node"] = {"bandwidth_gbps": 100}
    with pytest.raises(SpecError, match="intra_node.bandwidth_gbps: unknown key"):
        parse_profile(data, "p.yaml")
    data = load_profile("h200").to_dict()
    data["intra_node"]["curves"]["all_reduce"][8] = [[1024, -3.0]]
    with pytest.raises(SpecError, match="intra_node.curves.all_reduce.8"):
        parse_profile(data, "p.yaml")


def test_cli_user_error_is_one_line_exit_2(tmp_path, run_cli):
    p = write(tmp_path, "plan.yaml", {**PLAN, "tp": 3})
    code, out, err = run_cli("predict", "llama3-8b", "--cluster", "8xh100", "--plan", p)
    assert code == 2 and "tp: 3 does not divide" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out

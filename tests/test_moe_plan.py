"""Mixture of experts from spec to plan: Hugging Face MoE configs read, the expert-parallel plan rules, the cost model's
expert terms, the tuner's ep dimension, the exports and the GPU script's CPU smoke."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import yaml

from costmodel import SpecError, check_plan, load_model, parse_plan, predict
from costmodel.flops import model_flops_per_token
from costmodel.hardware import GiB
from costmodel.specs import ModelSpec

# mistralai/Mixtral-8x7B-v0.1 config.json, as published
MIXTRAL = {"architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
           "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
           "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
           "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
           "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
           "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16", "transformers_version": "4.36.0.dev0", "use_cache": True, "vocab_size": 32000}
# Qwen/Qwen3-30B-A3B config.json (its MoE keys), with a made-up sparse step and dense layer for the pattern check
QWEN3 = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 2048, "intermediate_size": 6144,
         "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
         "head_dim": 128, "vocab_size": 151936, "num_experts": 128, "num_experts_per_tok": 8,
         "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "router_aux_loss_coef": 0.001,
         "model_type": "qwen3_moe", "tie_word_embeddings": False, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
         "max_position_embeddings": 40960, "output_router_logits": False, "max_window_layers": 48}
# deepseek-ai/DeepSeek-V3 config.json (the keys that shape training)
DEEPSEEK = {"architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 7168, "intermediate_size": 18432,
            "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
            "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256, "num_experts_per_tok": 8,
            "first_k_dense_replace": 3, "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": 1536,
            "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "n_group": 8, "topk_group": 4,
            "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
            "routed_scaling_factor": 2.5, "aux_loss_alpha": 0.001, "seq_aux": True, "ep_size": 1,
            "num_nextn_predict_layers": 1, "vocab_size": 129280, "model_type": "deepseek_v3",
            "tie_word_embeddings": False, "rope_theta": 10000, "rms_norm_eps": 1e-06,
            "max_position_embeddings": 163840}
PLAN = dict(global_batch_size=64, micro_batch_size=2, seq_len=4096, dp=8, tp=1, pp=1, zero=3, recompute="full")


def write(tmp_path, data, name="config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


# ---- specs --------------------------------------------------------------------------------------------------
def test_mixtral_config_json_reads_like_the_recipe_and_counts_published_parameters(tmp_path):
    m, recipe = load_model(write(tmp_path, MIXTRAL)), load_model("mixtral-8x7b")
    assert (m.num_experts, m.num_experts_per_tok, m.expert_width) == (8, 2, 14336)
    assert m.num_params() == recipe.num_params() == 46_702_792_704   # Mixtral-8x7B's safetensors total
    active = m.block_params(active=True) + 2 * m.embedding_params()
    assert active == pytest.approx(12.9e9, rel=0.01)                  # "12.9B active" (Mixtral paper)


def test_qwen3_moe_recipes_match_their_model_cards():
    # 30,532,122,624 on the card includes Qwen3's per-head q/k norms (2 x 128 per block), not modelled
    assert load_model("qwen3-30b-a3b").num_params() == 30_532_122_624 - 48 * 256
    assert load_model("qwen3-235b-a22b").num_params() == pytest.approx(235e9, rel=0.005)


def test_qwen3_sparse_step_and_mlp_only_layers_set_the_block_pattern(tmp_path):
    m = load_model(write(tmp_path, {**QWEN3, "decoder_sparse_step": 2, "mlp_only_layers": [1]}))
    assert [m.is_moe_layer(i) for i in range(6)] == [False, False, False, True, False, True]
    assert m.moe_layers_in(0, 48) == 23 and m.moe_layers_in(3, 4) == 2


def test_deepseek_v3_config_reads_its_keys_and_warns_what_it_trains_differently(tmp_path):
    with pytest.warns(UserWarning) as caught:
        m = load_model(write(tmp_path, DEEPSEEK))
    text = " ".join(str(w.message) for w in caught)
    assert "latent attention" in text and "noaux_tc" in text and "multi-token" in text
    assert (m.num_experts, m.num_shared_experts, m.first_k_dense_replace, m.head_dim) == (256, 1, 3, 128)
    assert (m.scoring_func, m.routed_scaling_factor, m.router_aux_loss_coef) == ("sigmoid", 2.5, 0.001)
    assert [m.is_moe_layer(i) for i in (0, 2, 3, 60)] == [False, False, True, True]


@pytest.mark.parametrize("key, value", [("scoring_func", "sparsemax"), ("topk_method", "expert_choice")])
def test_an_unknown_router_type_is_one_line_naming_the_key(tmp_path, key, value):
    with pytest.raises(SpecError, match=f"{key}: router type '{value}' is not supported") as e:
        quiet(load_model, write(tmp_path, {**DEEPSEEK, key: value}))
    assert "\n" not in str(e.value)


def test_moe_keys_on_a_dense_model_are_refused(tmp_path):
    dense = {k: v for k, v in MIXTRAL.items() if k != "num_local_experts"}
    with pytest.raises(SpecError, match="num_experts_per_tok: is a mixture-of-experts key on a dense model"):
        load_model(write(tmp_path, dense))


def test_mfu_counts_active_parameters():
    m = load_model("mixtral-8x7b")
    dense_equivalent = 6 * m.num_params()
    assert model_flops_per_token(m, 4096) < 0.35 * dense_equivalent   # 2 of 8 experts per token


# ---- plan rules ------------------------------------------------------------------------------------------------
def test_ep_that_does_not_divide_the_experts_names_ep_and_the_choices():
    plan = parse_plan({**PLAN, "dp": 16, "global_batch_size": 64, "ep": 16})
    with pytest.raises(SpecError, match=r"ep: 16 does not divide the 8 experts of mixtral-8x7b; use ep in \[1, 2, 4, 8\]"):
        check_plan(plan, load_model("mixtral-8x7b"))


def test_ep_must_divide_dp_without_a_model():
    with pytest.raises(SpecError, match="ep: 3 does not divide dp 8"):
        parse_plan({**PLAN, "ep": 3})


@pytest.mark.parametrize("key, value", [("ep", 2), ("moe_imbalance", 1.2)])
def test_moe_plan_keys_on_a_dense_model_are_refused(key, value):
    with pytest.raises(SpecError, match=f"{key}: is {value} but llama3-8b is dense"):
        check_plan(parse_plan({**PLAN, key: value}), load_model("llama3-8b"))


def test_tensor_parallel_experts_are_refused_with_the_fix():
    with pytest.raises(SpecError, match="tp: is 2 with mixture-of-experts qwen3-30b-a3b.*use tp: 1 with ep"):
        check_plan(parse_plan({**PLAN, "dp": 4, "tp": 2, "global_batch_size": 32}), load_model("qwen3-30b-a3b"))


@pytest.mark.parametrize("plan_extra, model, words", [
    ({"ep": 16, "dp": 16, "global_batch_size": 64}, "mixtral-8x7b", "does not divide the 8 experts"),
    ({"ep": 2}, "llama3-8b", "is dense"),
])
def test_cli_bad_moe_input_is_one_line_with_exit_2(run_cli, tmp_path, plan_extra, model, words):
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump({**PLAN, **plan_extra}))
    cluster = "2x8xh100" if plan_extra.get("dp") == 16 else "8xh100"
    code, out, err = run_cli("predict", model, "--cluster", cluster, "--plan", str(p))
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_cli_unknown_router_in_a_config_json_exits_2(run_cli, tmp_path):
    code, _, err = run_cli("predict", str(write(tmp_path, {**QWEN3, "scoring_func": "sparsemax"})), "--cluster",
                           "8xh100", "--plan", "recipes/plans/qwen3-30b-a3b-ep4.yaml")
    assert code == 2 and "scoring_func" in err and len(err.strip().splitlines()) == 1


# ---- cost model -------------------------------------------------------------------------------------------------
def _pred(model="qwen3-30b-a3b", cluster="8xh100", **kw):
    return quiet(predict, model, cluster, {**PLAN, **kw})


def test_expert_state_is_sharded_over_all_dp_ranks_whatever_ep():
    # zero 3: fp32 state of every weight 1/dp per rank (experts over ep x dp/ep); bf16 unsharded experts 1/ep
    by_ep = {e: _pred(ep=e) for e in (1, 2, 8)}
    master = {e: p.memory_breakdown["master_params"] for e, p in by_ep.items()}
    assert master[1] == pytest.approx(master[8], rel=1e-9) == pytest.approx(4 * 30.53e9 / 8, rel=0.01)
    unsharded = {e: _pred(ep=e, zero=2).memory_breakdown["unsharded_params"] for e in (1, 2, 8)}
    assert unsharded[1] > 1.9 * unsharded[2] > 3.5 * unsharded[8]


def test_all_to_all_costs_nothing_without_ep_and_more_across_nodes():
    assert _pred(ep=1).time_breakdown["ep_comm"] == 0
    inside = quiet(predict, "qwen3-30b-a3b", "2x8xh100", {**PLAN, "dp": 16, "global_batch_size": 128, "ep": 8})
    across = quiet(predict, "qwen3-30b-a3b", "2x8xh100", {**PLAN, "dp": 16, "global_batch_size": 128, "ep": 16})
    per_rank = lambda p: p.time_breakdown["ep_comm"]  # noqa: E731
    assert 0 < per_rank(inside) < 0.5 * per_rank(across)   # 16 ranks span both nodes: the NICs carry it


def test_more_experts_per_rank_token_batch_makes_grouped_gemms_efficient():
    # ep gathers the copies of ep ranks onto E/ep experts: per-expert GEMMs grow, so compute falls (no imbalance)
    t = {e: _pred(ep=e, moe_imbalance=1.0).time_breakdown["compute_bwd"] for e in (1, 8)}
    assert t[8] < 0.8 * t[1]


def test_imbalance_slows_the_expert_parallel_step_and_is_moot_without_ep():
    assert _pred(ep=4, moe_imbalance=1.5).step_time_s > 1.1 * _pred(ep=4, moe_imbalance=1.0).step_time_s
    assert _pred(ep=1, moe_imbalance=1.5).step_time_s == _pred(ep=1, moe_imbalance=1.0).step_time_s


def test_routed_activations_grow_with_top_k():
    base = load_model("qwen3-30b-a3b")
    top = {k: ModelSpec(**{**base.__dict__, "num_experts_per_tok": k}) for k in (2, 8)}
    acts = {k: quiet(predict, m, "8xh100", {**PLAN, "recompute": "none"}).memory_breakdown["activations"]
            for k, m in top.items()}
    T, L, h, Fe = 2 * 4096, 48, 2048, 768
    per_copy = 2 * h + 4 * 2 * Fe + 2 * h + 40    # grouped input, hidden (4 tensors), output, indices
    assert acts[8] - acts[2] == pytest.approx(L * T * 6 * per_copy, rel=0.02)


def test_dense_leading_blocks_make_deepseeks_first_stage_lighter():
    pred = quiet(predict, "deepseek-v3", "256x8xh100", "recipes/plans/deepseek-v3-pp8-ep32.yaml")
    first, second = pred.stages[0], pred.stages[1]
    assert first["layers"] == second["layers"] == 8
    assert first["t_microbatch_s"] < second["t_microbatch_s"]   # 3 of its 8 blocks are dense


def test_dense_models_cost_what_they_did():
    pred = quiet(predict, "llama3-8b", "8xh100", "recipes/plans/llama3-8b-fsdp.yaml")
    assert pred.time_breakdown["ep_comm"] == 0
    assert "expert" not in " ".join(pred.memory_breakdown)


# ---- tuner and explain ------------------------------------------------------------------------------------------
def test_tuner_picks_expert_parallelism_where_it_pays_and_explain_says_why():
    import planner
    from planner.explain import alternatives
    # Mixtral's experts are full-width: without EP every rank would gather all eight across four nodes (on one
    # node, Qwen3-30B-A3B's 128 small experts are priced within 4 % either way)
    res = planner.plan("mixtral-8x7b", "4x8xh100", global_batch_size=512, seq_len=4096, time_limit_s=60)
    assert res.best is not None and res.best.plan.ep > 1 and "(ep" in res.best.layout
    alts = quiet(alternatives, load_model("mixtral-8x7b"), res.best.cluster, res.best.plan, res.best.prediction)
    ep_alts = [a for a in alts if a.change.startswith("ep=")]
    assert ep_alts and all(a.delta_s > 0 or not a.prediction.feasible for a in ep_alts)


def test_dense_models_are_never_given_ep():
    from planner.space import SearchSpace, expert_degrees
    assert expert_degrees(load_model("llama3-8b"), 64, SearchSpace()) == [1]
    assert expert_degrees(load_model("deepseek-v3"), 2048, SearchSpace()) == [1, 2, 4, 8, 16, 32, 64]


# ---- exports ----------------------------------------------------------------------------------------------------
def _export(target, plan="recipes/plans/qwen3-30b-a3b-ep4.yaml", model="qwen3-30b-a3b"):
    from costmodel import load_plan
    from launcher.export.common import export_plan
    return quiet(export_plan, load_plan(plan), load_model(model), None, target)


def test_megatron_export_carries_the_moe_flags():
    import shlex
    text = _export("megatron").files["megatron_args.sh"]
    args = shlex.split(text.split("MEGATRON_ARGS=(")[1].split(")")[0])
    flag = lambda f: args[args.index(f) + 1]  # noqa: E731
    assert (flag("--num-experts"), flag("--moe-router-topk"), flag("--moe-ffn-hidden-size")) == ("128", "8", "768")
    assert flag("--expert-model-parallel-size") == "4" and "--moe-grouped-gemm" in args
    ds = _export("megatron", "recipes/plans/deepseek-v3-pp8-ep32.yaml", "deepseek-v3").files["megatron_args.sh"]
    assert "--moe-layer-freq '([0]*3+[1]*58)'" in ds and "--moe-shared-expert-intermediate-size 2048" in ds
    assert "--moe-router-score-function sigmoid" in ds


def test_torchtitan_export_sets_the_expert_degree_on_its_moe_flavor():
    res = _export("torchtitan")
    text = res.files["loadmaster_torchtitan.py"]
    assert "from torchtitan.models.qwen3 import config_registry, model_registry" in text
    assert "model_registry('30B-A3B'" in text and "expert_parallel_degree=4" in text
    compile(text, "loadmaster_torchtitan.py", "exec")


def test_torchtitan_export_refuses_an_moe_shape_it_has_no_model_of():
    with pytest.raises(SpecError, match="TorchTitan 0.3 has no mixture-of-experts model"):
        _export("torchtitan", "recipes/plans/qwen3-30b-a3b-ep4.yaml", "mixtral-8x7b")


def test_deepspeed_export_warns_with_the_moe_layer_to_write():
    res = _export("deepspeed")
    assert any("deepspeed.moe.layer.MoE(" in w and "ep_size=4" in w for w in res.warnings)


# ---- notebook sweep, GPU script ---------------------------------------------------------------------------------
def test_sweep_covers_ep_and_marks_illegal_degrees():
    import planner
    sw = quiet(planner.sweep, "mixtral-8x7b", "2x8xh100", dict(PLAN, dp=16, global_batch_size=128), ep=[1, 8, 16])
    by = {e.point["ep"]: e for e in sw}
    assert by[1].plan.ep == 1 and by[8].layout.endswith("(ep8)")
    assert by[16].prediction is None and "does not divide the 8 experts" in by[16].reason
    frame = sw.to_frame()
    assert list(frame["ep"]) == [1, 8, 16]


def test_moe_block_gpu_script_runs_its_cpu_smoke(tmp_path):
    from benchmarks.gpu import moe_block
    assert moe_block.main(["--out", str(tmp_path), "--cpu-smoke", "--budget-s", "60"]) == 0
    res = json.loads((tmp_path / "moe_block.json").read_text())
    assert res["grouped"] and res["block"] and res["grouped_gemm_efficiency"] > 0
    assert np.isfinite(res["block"][0]["pred_profile"]["time_s"]) and res["block"][0]["pred_profile"]["saved_bytes"]
    assert "grouped_gemm_efficiency: {value:" in (tmp_path / "grouped_gemm_efficiency.yaml").read_text()


def test_trainer_alignment_is_the_runtime_constant_the_model_uses():
    from costmodel.constants import runtime_constants
    from launcher.runtime.moe import _ALIGN_ROWS
    assert runtime_constants()["moe_pad_rows_per_expert"].value == _ALIGN_ROWS


def test_gib_helper_unchanged():
    assert GiB == 2**30


def test_rehearsal_roles_are_plans_that_fit():
    from costmodel import load_cluster
    roles = yaml.safe_load(open("benchmarks/gpu/rehearse_moe.yaml"))
    assert len(roles) >= 6 - 1 and sum(len(r["ranks"]) for r in roles) >= 6
    for r in roles:
        plan = parse_plan(r["plan"])
        assert plan.ep > 1 and 8 <= load_cluster(r["cluster"]).num_gpus <= 64
        assert quiet(predict, r["model"], r["cluster"], plan).feasible, r["name"]
        assert all(0 <= k < plan.world_size for k in r["ranks"])

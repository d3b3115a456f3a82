"""`loadmaster export`: TorchTitan, Megatron-LM and DeepSpeed configs of three shipped plans.

Three layers of checks:
- the engines' own parsers (tests/engines.py): Megatron-LM's parse_args + validate_args (megatron-core
  0.19.2), TorchTitan 0.3.0's ConfigManager (the config module imported, its model config built, float8
  converter applied) and DeepSpeed 0.19.8's DeepSpeedConfig, on the three shipped plans and on every shipped
  model under a TP + PP + checkpointing plan. They fail under CI if a parser is missing.
- golden files (tests/golden/export/PLAN/TARGET/): every exported file, the launch line and the warnings.
  Regenerate after an intended change with LOADMASTER_UPDATE_GOLDEN=1 and review the diff.
- consistency of each export with the plan's arithmetic (batch, degrees, layers, float8 blocks).
"""
from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import engines

from costmodel import ClusterSpec, Plan, load_cluster, load_model, load_plan
from costmodel.errors import SpecError
from costmodel.plan import tp_choices
from costmodel.specs import shipped
from launcher.export.common import TARGETS, export_plan, stage_view
from launcher.export.torchtitan import MOE_FLAVORS, _moe_shape

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "export"
PLANS = ("llama3-8b-fsdp", "llama3-70b-tp-pp-ckpt", "llama3-8b-offload-fp8")


def _export(name: str, target: str):
    plan = load_plan(ROOT / "recipes" / "plans" / f"{name}.yaml")
    model, cluster = load_model(plan.model), load_cluster(plan.cluster)
    return plan, model, export_plan(plan, model, cluster, target)


def _megatron_args(text: str) -> dict[str, list[str]]:
    """Flags of megatron_args.sh: flag -> its values (empty list for a switch)."""
    body = text.split("MEGATRON_ARGS=(", 1)[1].rsplit(")", 1)[0]
    out: dict[str, list[str]] = {}
    flag = None
    for tok in shlex.split(body):
        if tok.startswith("--"):
            flag = tok
            assert flag not in out, f"{flag} given twice"
            out[flag] = []
        else:
            out[flag].append(tok)
    return out


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", PLANS)
def test_export_matches_golden(name, target, tmp_path):
    _, _, result = _export(name, target)
    result.write(tmp_path)
    (tmp_path / "warnings.txt").write_text("".join(f"{w}\n" for w in result.warnings))
    golden = GOLDEN / name / target
    if os.environ.get("LOADMASTER_UPDATE_GOLDEN"):
        golden.mkdir(parents=True, exist_ok=True)
        for f in tmp_path.iterdir():
            (golden / f.name).write_text(f.read_text())
    produced = sorted(f.name for f in tmp_path.iterdir())
    assert produced == sorted(f.name for f in golden.iterdir())
    for f in produced:
        assert (tmp_path / f).read_text() == (golden / f).read_text(), f"{name}/{target}/{f} differs from golden"


@pytest.mark.parametrize("name", PLANS)
def test_megatron_args_follow_the_plan(name):
    plan, model, result = _export(name, "megatron")
    args = _megatron_args(result.files["megatron_args.sh"])
    one = lambda flag, default=None: int(args[flag][0]) if flag in args else default  # noqa: E731
    tp, pp = one("--tensor-model-parallel-size"), one("--pipeline-model-parallel-size", 1)
    assert (tp, pp) == (plan.tp, plan.pp)
    dp = plan.world_size // (tp * pp)  # what Megatron derives from the world size
    accum = one("--global-batch-size") // (one("--micro-batch-size") * dp)
    assert accum == plan.num_microbatches and one("--global-batch-size") == plan.global_batch_size
    assert one("--num-layers") == model.num_hidden_layers and one("--seq-length") == plan.seq_len
    layers = plan.stage_layers(model.num_hidden_layers)
    if pp > 1 and len(set(layers)) > 1:
        first, last = one("--decoder-first-pipeline-num-layers"), one("--decoder-last-pipeline-num-layers")
        assert (first, last) == (layers[0], layers[-1])
        assert (model.num_hidden_layers - first - last) % (pp - 2 or 1) == 0
    if plan.recompute == "full":
        assert args["--recompute-method"] == ["block"]
        assert one("--recompute-num-layers") == max(plan.per_stage("recompute_layers", model.num_hidden_layers))
    fp8 = stage_view(plan, model).fp8_blocks()
    if fp8:
        assert one("--num-layers-at-start-in-bf16") == 0
        assert one("--num-layers-at-end-in-bf16") == model.num_hidden_layers - len(fp8)
    assert ("--sequence-parallel" in args) == (plan.tp > 1 and plan.sequence_parallel)


@pytest.mark.parametrize("name", PLANS)
def test_deepspeed_batch_is_consistent(name):
    plan, _, result = _export(name, "deepspeed")
    cfg = json.loads(result.files["ds_config.json"])
    # DeepSpeed's rule: train_batch_size = micro batch × accumulation steps × data-parallel ranks
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] \
        * plan.dp
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["zero_optimization"]["stage"] <= plan.zero


def test_inexpressible_knobs_are_warned_never_dropped():
    plan = load_plan(ROOT / "recipes" / "plans" / "llama3-70b-tp-pp-ckpt.yaml").replace(
        offload_activation_layers=[0, 2, 2, 2], offload_state_layers=[1, 0, 0, 0], fp8_layers=[0, 4, 4, 0],
        fp8_rotation_steps=50, fp8_recipe="rowwise", pp_schedule="GPipe", compile=True)
    model, cluster = load_model(plan.model), load_cluster(plan.cluster)
    for target in TARGETS:
        text = " ".join(export_plan(plan, model, cluster, target).warnings)
        for knob in ("offload_activation_layers", "fp8_rotation_steps", "offload_state_layers"):
            assert knob in text, f"{target} drops {knob} silently"
    megatron = " ".join(export_plan(plan, model, cluster, "megatron").warnings)
    assert "GPipe" in megatron and "fp8_layers 0/4/4/0" in megatron and "compile" in megatron
    assert "tensorwise" in " ".join(export_plan(plan.replace(fp8_recipe="tensorwise"), model, cluster,
                                                "torchtitan").warnings)


def test_cli_export_writes_files_and_json(run_cli, tmp_path):
    plan = ROOT / "recipes" / "plans" / "llama3-8b-offload-fp8.yaml"
    code, out, err = run_cli("export", plan, "--to", "megatron", "-o", tmp_path)
    assert code == 0, err
    assert (tmp_path / "megatron_args.sh").is_file() and (tmp_path / "launch.sh").is_file()
    assert "warning: offload_activation_layers 4" in err
    code, out, _ = run_cli("export", plan, "--to", "deepspeed", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["target"] == "deepspeed" and d["warnings"] and "ds_config.json" in d["files"]


def test_cli_export_user_errors(run_cli, tmp_path):
    plan = ROOT / "recipes" / "plans" / "llama3-8b-fsdp.yaml"
    code, _, err = run_cli("export", plan, "--to", "colossal")
    assert code == 2 and "torchtitan, megatron, deepspeed" in err
    bare = tmp_path / "bare.yaml"
    bare.write_text("global_batch_size: 8\nmicro_batch_size: 1\nseq_len: 128\ndp: 8\ntp: 1\npp: 1\nzero: 3\n"
                    "recompute: none\n")
    code, _, err = run_cli("export", bare, "--to", "megatron")
    assert code == 2 and "--model" in err
    code, _, err = run_cli("export", bare, "--to", "megatron", "--model", "llama3-8b", "--cluster", "4xl4")
    assert code == 2 and "dp × cp × tp × pp" in err


# ---- the engines' own parsers (tests/engines.py) --------------------------------------------------------


def tp_pp_ckpt(model) -> tuple[Plan, ClusterSpec]:
    """A TP + PP + partial-checkpointing plan for ``model`` on H100 nodes: the largest TP up to 8 that divides its
    widths, 2 pipeline stages (1 for tied embeddings, which check_plan keeps on one stage), DP 2."""
    tp = max([t for t in tp_choices(model) if t <= 8])
    pp = 1 if model.tie_word_embeddings else 2
    dp, L = 2, model.num_hidden_layers
    plan = Plan(global_batch_size=dp * 4 * pp, micro_batch_size=1, seq_len=4096, dp=dp, tp=tp, pp=pp, zero=2,
                recompute="full", recompute_layers=max(1, L // (2 * pp)), model=model.name)
    world = plan.world_size
    return plan, ClusterSpec(nodes=max(1, world // 8), gpus_per_node=min(world, 8), gpu="h100-sxm",
                             name=f"{world}xh100")


def _cases():
    """(name, plan, model, cluster) of every export the parsers check: the shipped plans, then every shipped
    model under tp_pp_ckpt."""
    out = []
    for name in PLANS:
        plan = load_plan(ROOT / "recipes" / "plans" / f"{name}.yaml")
        out.append((name, plan, load_model(plan.model), load_cluster(plan.cluster)))
    for name in shipped("models"):
        model = load_model(name)
        out.append((f"{name}-tp-pp-ckpt", *_with_model(tp_pp_ckpt(model), model)))
    return out


def _with_model(pc, model):
    return pc[0], model, pc[1]


CASES = _cases()
IDS = [c[0] for c in CASES]


def _launch_env(command: str) -> dict[str, str]:
    """The VAR=value assignments the exported launch line sets before torchrun."""
    env = {}
    for tok in shlex.split(command.split("&&")[-1]):
        if "=" not in tok or tok.startswith("-"):
            break
        k, v = tok.split("=", 1)
        env[k] = v
    return env


@pytest.fixture(scope="module")
def megatron_parsed():
    cases = []
    for _, plan, model, cluster in CASES:
        result = export_plan(plan, model, cluster, "megatron")
        argv = [*shlex.split(result.files["megatron_args.sh"].split("MEGATRON_ARGS=(", 1)[1].rsplit(")", 1)[0]),
                "--tokenizer-type", "NullTokenizer", "--data-path", "data", "--train-iters", "10", "--lr", "1e-4"]
        cases.append({"argv": argv, "env": {**_launch_env(result.command), "WORLD_SIZE": str(plan.world_size)}})
    return engines.megatron_parse(cases)


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_megatron_parses_and_validates_the_export(i, megatron_parsed):
    name, plan, model, _ = CASES[i]
    got = megatron_parsed[i]
    assert got["ok"], f"{name}: Megatron-LM refused the export: {got['error']}"
    a = got["args"]
    assert (a["tensor_model_parallel_size"], a["pipeline_model_parallel_size"], a["data_parallel_size"]) == \
        (plan.tp, plan.pp, plan.dp)
    assert (a["micro_batch_size"], a["global_batch_size"], a["seq_length"]) == \
        (plan.micro_batch_size, plan.global_batch_size, plan.seq_len)
    assert (a["num_layers"], a["hidden_size"], a["num_attention_heads"], a["ffn_hidden_size"]) == \
        (model.num_hidden_layers, model.hidden_size, model.num_attention_heads, model.intermediate_size)
    assert a["rotary_base"] == round(model.rope_theta) and a["layernorm_epsilon"] == model.rms_norm_eps
    assert a["add_qkv_bias"] == (model.qkv_bias or model.attention_bias)
    assert a["untie_embeddings_and_output_weights"] == (not model.tie_word_embeddings)
    assert a["use_rope_scaling"] == (model.rope_type == "llama3")
    if model.rope_type == "llama3":
        assert a["rope_scaling_factor"] == model.rope_scaling["factor"]


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_torchtitan_parses_the_export(i, tmp_path, monkeypatch):
    tt_config = engines.torchtitan(monkeypatch)
    from torchtitan.components.quantization import float8 as tt_float8
    from torchtitan.models.common.linear import Linear
    name, plan, model, cluster = CASES[i]
    if model.is_moe and _moe_shape(model) not in MOE_FLAVORS:   # TorchTitan builds MoE only from its flavors
        with pytest.raises(SpecError, match="TorchTitan 0.3 has no mixture-of-experts model"):
            export_plan(plan, model, cluster, "torchtitan")
        return
    result = export_plan(plan, model, cluster, "torchtitan")
    result.write(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "loadmaster_torchtitan", raising=False)
    importlib.invalidate_caches()
    monkeypatch.setattr(tt_float8, "has_cuda_capability", lambda *a: True)  # build the converter as on H100
    cfg = tt_config.ConfigManager().parse_args(["--module", "loadmaster_torchtitan", "--config", "loadmaster_plan"])
    par, tr = cfg.parallelism, cfg.training
    assert (par.tensor_parallel_degree, par.pipeline_parallel_degree) == (plan.tp, plan.pp)
    assert par.data_parallel_shard_degree * par.data_parallel_replicate_degree == plan.dp
    assert (tr.global_batch_size, tr.seq_len) == (plan.global_batch_size, plan.seq_len)
    micro = par.pipeline_parallel_microbatch_size if plan.pp > 1 else tr.local_batch_size
    assert micro == plan.micro_batch_size
    assert tr.global_batch_size // (tr.local_batch_size * plan.dp) == (1 if plan.pp > 1 else plan.num_microbatches)
    assert tr.enable_cpu_offload == bool(plan.offload_state_layers)
    assert type(cfg.activation_checkpoint).__qualname__ == {"full": "FullAC.Config",
                                                             "selective": "SelectiveAC.Config"}[plan.recompute]
    m = cfg.model_spec.model
    assert (m.dim, len(m.layers), m.vocab_size) == (model.hidden_size, model.num_hidden_layers, model.vocab_size)
    assert m.enable_weight_tying == model.tie_word_embeddings
    rope, norm = m.layers[-1].attention.rope, m.layers[-1].ffn_norm
    assert (rope.theta, norm.eps, m.norm.eps) == (model.rope_theta, model.rms_norm_eps, model.rms_norm_eps)
    if _moe_shape(model)[3] and MOE_FLAVORS[_moe_shape(model)][0] == "deepseek_v3":   # the flavor's own RoPE, warned
        assert rope.scaling == "yarn" and any("YaRN" in w for w in result.warnings)
    else:
        assert rope.scaling == ("llama" if model.rope_type == "llama3" else "none")
    if model.rope_type == "llama3":
        assert rope.scaling_factor == model.rope_scaling["factor"]
    if plan.pp > 1:
        parts = par.module_fqns_per_model_part
        assert [sum(n.startswith("layers.") for n in p) for p in parts] == plan.stage_layers(len(m.layers))
    fp8 = {int(fqn.split(".")[1]) for fqn, c, _, _ in m.traverse(Linear.Config) if "Float8" in type(c).__qualname__}
    assert sorted(fp8) == stage_view(plan, model).fp8_blocks()


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_deepspeed_parses_the_export(i, monkeypatch):
    ds_config_mod = engines.deepspeed_config(monkeypatch)
    name, plan, model, cluster = CASES[i]
    cfg = json.loads(export_plan(plan, model, cluster, "deepspeed").files["ds_config.json"])

    class DataParallel:  # what Megatron/DeepSpeed's mpu reports: the data-parallel world
        def __init__(self, size):
            self.size = size

        def get_data_parallel_world_size(self):
            return self.size

    monkeypatch.setattr(ds_config_mod.dist, "get_rank", lambda *a, **k: 0)  # no process group on CPU
    ds = ds_config_mod.DeepSpeedConfig(cfg, mpu=DataParallel(plan.dp))
    assert (ds.train_batch_size, ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps) == \
        (plan.global_batch_size, plan.micro_batch_size, plan.num_microbatches)
    assert ds.bfloat16_config.enabled and ds.zero_optimization_stage == cfg["zero_optimization"]["stage"]
    offload = ds.zero_config.offload_optimizer
    assert (offload is not None and getattr(offload.device, "value", offload.device) == "cpu") == \
        bool(plan.offload_state_layers)
    with pytest.raises(Exception):  # the schema's batch check is live: a wrong dp must fail it
        ds_config_mod.DeepSpeedConfig(cfg, mpu=DataParallel(plan.dp * 2))


def test_torchtitan_flavor_table_matches_torchtitan(monkeypatch):
    engines.torchtitan(monkeypatch)
    from torchtitan.models.llama3 import model_registry

    from launcher.export.torchtitan import _FLAVOR_ROPE, FLAVORS
    for (h, L, heads, kv, ffn, vocab, tied), (flavor, _) in FLAVORS.items():
        m = model_registry(flavor).model
        attn, mlp = m.layers[0].attention, m.layers[0].feed_forward
        assert (m.dim, len(m.layers), m.vocab_size, m.enable_weight_tying) == (h, L, vocab, tied), flavor
        assert (attn.n_heads, attn.n_kv_heads, mlp.w1.out_features) == (heads, kv, ffn), flavor
        rope = attn.rope
        assert {k: getattr(rope, k) for k in _FLAVOR_ROPE} == _FLAVOR_ROPE, flavor


def test_megatron_refuses_what_the_old_export_wrote():
    """The parser is live: the float RoPE base and a missing sequence-parallel TP degree fail in Megatron."""
    plan, model, cluster = CASES[0][1:]
    argv = shlex.split(export_plan(plan, model, cluster, "megatron").files["megatron_args.sh"]
                       .split("MEGATRON_ARGS=(", 1)[1].rsplit(")", 1)[0])
    bad = [a if a != str(round(model.rope_theta)) else f"{model.rope_theta:g}e0" for a in argv]
    got = engines.megatron_parse([{"argv": bad + ["--tokenizer-type", "NullTokenizer", "--train-iters", "1"],
                                   "env": {"WORLD_SIZE": str(plan.world_size)}},
                                  {"argv": argv + ["--tokenizer-type", "NullTokenizer", "--train-iters", "1"],
                                   "env": {"WORLD_SIZE": str(plan.world_size * 3)}}])
    assert not got[0]["ok"] and "rotary-base" in got[0]["error"]
    assert not got[1]["ok"] and "global" in got[1]["error"].lower()

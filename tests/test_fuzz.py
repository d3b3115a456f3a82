"""Hardened inputs: generated model, cluster and plan files through the API and the CLI.

Files are valid, mutated (keys dropped, added, retyped), absurd (zero layers, 10⁹ GPUs, negative batch),
truncated YAML, or bytes that are not YAML at all. Each must either work or fail as a user error: a
ValueError (SpecError) with a one-line message from the API; exit code 2 and one `error:` line on stderr
from the CLI. Never a traceback, never a hang: every case runs under a wall-clock alarm. Hypothesis runs
derandomized, so CI sees the same cases every time; the count is printed in the terminal summary.
"""
from __future__ import annotations

import collections
import contextlib
import signal
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmodel import check_plan, load_cluster, load_model, load_plan, predict

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the CLI's plan warnings, expected

FUZZ_SUMMARY: collections.Counter = collections.Counter()  # conftest prints it at the end of the run
CASE_SECONDS = 10.0  # far above any legitimate case (predict ~10 ms; plan is capped by --time-limit)

WORK = Path(tempfile.mkdtemp(prefix="loadmaster-fuzz-"))

TINY_MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512}
CLUSTER = {"nodes": 1, "gpus_per_node": 4, "gpu": "l4"}
PLAN = {"global_batch_size": 8, "micro_batch_size": 2, "seq_len": 128, "dp": 4, "tp": 1, "pp": 1, "zero": 3,
        "recompute": "none"}
PLAN_KEYS = ["recompute_layers", "offload_activation_layers", "offload_state_layers", "fp8_layers",
             "fp8_rotation_steps", "fp8_temperature", "fp8_recipe", "layers_per_stage", "pp_schedule", "virtual_stages",
             "sequence_parallel", "compile", "grad_reduce", "model", "cluster", "ep", "moe_imbalance",
             "cp", "cp_rotate"]
MODEL_KEYS = ["head_dim", "tie_word_embeddings", "hidden_act", "rms_norm_eps", "rope_theta", "name",
              "architectures", "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
              "num_shared_experts", "first_k_dense_replace", "decoder_sparse_step", "mlp_only_layers", "scoring_func",
              "topk_method", "n_routed_experts", "kv_lora_rank"]
CLUSTER_KEYS = ["name", "intra_node_bandwidth_gbps", "inter_node_bandwidth_gbps", "host_memory_gib"]


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no `except Exception` in the code under test swallows it."""


@contextlib.contextmanager
def bounded(seconds: float = CASE_SECONDS):
    def on_alarm(signum, frame):
        raise Hang(f"case ran longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


absurd_ints = st.sampled_from([0, -1, -8, 1, 2, 3, 7, 10**9, 10**12, 2**63, 10**30])
scalars = st.one_of(
    absurd_ints, st.integers(-10, 300), st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.sampled_from(["full", "selective", "none", "1F1B", "GPipe", "Interleaved1F1B",
                                          "rowwise", "last", "every", "h100-sxm", "l4", "nonesuch", "silu", "gelu",
                                          "x" * 300, "/", "../profiles", "recipes/models/llama3-8b.yaml"]),
    st.sampled_from([1e-300, 5e-324, 1e300, -0.0, 1e-9]),
    st.lists(st.integers(-2, 40), max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def mutated(draw, base: dict, extra_keys: list[str]) -> dict:
    """``base`` with 0-3 keys dropped, added, retyped or set to absurd values of their own type."""
    d = dict(base)
    keys = list(base) + extra_keys + ["bogus_key"]
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        key = draw(st.sampled_from(keys))
        how = draw(st.sampled_from(["drop", "retype", "absurd", "absurd", "absurd"]))
        if how == "drop":
            d.pop(key, None)
        elif how == "absurd" and isinstance(base.get(key), int):
            d[key] = draw(st.one_of(absurd_ints, st.integers(-10, 300)))
        else:
            d[key] = draw(scalars)
    return d


@st.composite
def file_text(draw, base: dict, extra_keys: list[str], junk: int = 2) -> bytes:
    """The bytes of a spec file: YAML of a (mutated) dict, truncated YAML, or (1 in ``junk`` + 4) junk."""
    kind = draw(st.sampled_from(["yaml"] * 3 + ["truncated", "aliases"] + ["bytes", "text"][:junk]))
    if kind in ("bytes", "text"):
        FUZZ_SUMMARY["junk files"] += 1
        return draw(st.binary(max_size=64)) if kind == "bytes" else draw(st.text(max_size=64)).encode()
    text = yaml.safe_dump(draw(mutated(base, extra_keys)), sort_keys=False)
    if kind == "aliases":  # a billion-laughs value under one of the keys (9^depth elements once expanded)
        FUZZ_SUMMARY["YAML alias bombs"] += 1
        depth, key = draw(st.integers(1, 8)), draw(st.sampled_from(list(base)))
        lines = ["x0: &x0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"] + [
            f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, depth + 1)]
        kept = "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith(f"{key}:"))
        return ("\n".join(lines) + f"\n{kept}{key}: *x{depth}\n").encode()
    if kind == "truncated":
        text = text[:draw(st.integers(0, len(text)))]
    return text.encode()


@st.composite
def absurd_but_valid(draw) -> tuple[bytes, bytes, bytes]:
    """Well-typed, mostly consistent model, cluster and plan at the edges of the allowed ranges: the
    checks pass more often, so the cost model itself sees 10⁷-wide layers, 10⁶ GPUs and 10⁹-token batches."""
    pick = lambda *xs: draw(st.sampled_from(xs))  # noqa: E731
    heads = pick(1, 2, 4, 64)
    kv, ffn = pick(*[k for k in (1, 2, 4, 8) if heads % k == 0]), pick(1, 64, 14336, 10**7)
    model = {"hidden_size": pick(heads, 64 * heads, 10**7 // heads * heads), "intermediate_size": ffn,
             "num_hidden_layers": pick(1, 2, 3, 80, 10**4, 10**7), "num_attention_heads": heads,
             "num_key_value_heads": kv, "vocab_size": pick(1, 256, 10**7), "hidden_act": pick("silu", "gelu"),
             "tie_word_embeddings": pick(True, False)}
    experts = pick(0, 0, 8, 256)   # a mixture of experts half the time
    if experts:
        model.update(hidden_act="silu", num_experts=experts, num_experts_per_tok=pick(1, 2, experts),
                     moe_intermediate_size=pick(1, 768, 10**6), first_k_dense_replace=pick(0, 1, 3),
                     num_shared_experts=pick(0, 1))
    nodes, per_node = pick(1, 2, 1000, 125_000), pick(1, 8)
    cluster = {"nodes": nodes, "gpus_per_node": per_node, "gpu": pick("l4", "h100-sxm", "a100-40g", "b200")}
    tp = pick(*[t for t in (1, 2, 8) if kv % t == 0 and ffn % t == 0])
    pp, mbs, k, cp = pick(1, 2, 4), pick(1, 2, 1000), pick(4, 16, 1000, 10**6), pick(1, 2, 8)
    world = nodes * per_node
    dp = world // (tp * pp * cp) if world % (tp * pp * cp) == 0 else 1
    stage = lambda: draw(st.one_of(st.sampled_from([0, 1, 2]), st.lists(st.integers(0, 2), min_size=pp, max_size=pp)))  # noqa: E731,E501
    plan = {"global_batch_size": mbs * dp * k, "micro_batch_size": mbs, "seq_len": pick(8, 128, 10**6, 10**9),
            "dp": dp, "tp": tp, "pp": pp, "cp": cp, "cp_rotate": pick("allgather", "alltoall"),
            "zero": pick(0, 1, 2, 3), "recompute": pick("none", "full", "selective"),
            "offload_activation_layers": stage(), "offload_state_layers": stage(), "fp8_layers": stage(),
            "compile": pick(True, False), "fp8_rotation_steps": pick(0, 10), "fp8_temperature": pick(0.0, 1.0),
            "ep": pick(*[e for e in (1, 2, 8, 256) if dp % e == 0])}
    FUZZ_SUMMARY["absurd-but-valid triples"] += 1
    return tuple(yaml.safe_dump(d).encode() for d in (model, cluster, plan))


def _write(name: str, data: bytes) -> Path:
    p = WORK / name
    p.write_bytes(data)
    return p


def _user_error_ok(e: ValueError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    FUZZ_SUMMARY["user errors (ValueError / exit 2)"] += 1


def _api(fn, *args):
    """Run ``fn``; True when it returned, False on a one-line user error. Anything else fails the test."""
    FUZZ_SUMMARY["cases"] += 1
    try:
        with bounded(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(*args)
    except ValueError as e:
        _user_error_ok(e)
        return False
    FUZZ_SUMMARY["accepted"] += 1
    return True


def fuzz(n: int) -> settings:
    """Reproducible settings: the same n cases on every run, no deadline (the alarm bounds each case)."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


@fuzz(1000)
@given(kind=st.sampled_from(["model", "cluster", "plan"]), data=st.data(), suffix=st.sampled_from([".yaml", ".json"]))
def test_api_loaders_accept_or_raise_user_errors(kind, data, suffix):
    base, extra, loader = {"model": (TINY_MODEL, MODEL_KEYS, load_model),
                           "cluster": (CLUSTER, CLUSTER_KEYS, load_cluster),
                           "plan": (PLAN, PLAN_KEYS, load_plan)}[kind]
    path = _write(f"{kind}{suffix}", data.draw(file_text(base, extra)))
    _api(loader, path)


def _predict_all(mpath: Path, cpath: Path, ppath: Path) -> None:
    model, cluster, plan = load_model(mpath), load_cluster(cpath), load_plan(ppath)
    check_plan(plan, model, cluster)
    pred = predict(model, cluster, plan)
    numbers = [pred.step_time_s, pred.peak_memory_bytes, pred.tokens_per_s, pred.mfu]
    assert all(x >= 0 for x in numbers), f"negative or NaN prediction {numbers}"


@fuzz(500)
@given(files=st.one_of(st.tuples(file_text(TINY_MODEL, MODEL_KEYS, 0), file_text(CLUSTER, CLUSTER_KEYS, 0),
                                  file_text(PLAN, PLAN_KEYS, 1)), absurd_but_valid()))
def test_api_predict_accepts_or_raises_user_errors(files):
    m, c, p = files
    _api(_predict_all, _write("m.yaml", m), _write("c.yaml", c), _write("p.yaml", p))


@pytest.fixture(scope="module")
def cli():
    from typer.testing import CliRunner

    from planner.cli import app, register_all
    register_all()
    runner = CliRunner()

    def run(*args) -> int:
        FUZZ_SUMMARY["cases"] += 1
        FUZZ_SUMMARY["CLI runs"] += 1
        with bounded():
            res = runner.invoke(app, [str(a) for a in args])
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise AssertionError(f"loadmaster {' '.join(map(str, args))} raised {res.exception!r}") \
                from res.exception
        assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
        if res.exit_code == 2:
            lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("warning: ")]
            assert len(lines) == 1 and lines[0].startswith("error:"), f"not a one-line error: {res.stderr!r}"
            FUZZ_SUMMARY["user errors (ValueError / exit 2)"] += 1
        else:
            FUZZ_SUMMARY["accepted"] += 1
        return res.exit_code
    return run


# What a user may type where a file is expected: usually the generated file, else a recipe name, a name
# that is no recipe, a name too long for the file system, the root directory or nothing.
REFS = ["file"] * 6 + ["llama3-8b", "4xl4", "nonesuch", "x" * 300, "/", ""]


@fuzz(500)
@given(files=st.one_of(st.tuples(file_text(TINY_MODEL, MODEL_KEYS, 0), file_text(CLUSTER, CLUSTER_KEYS, 0),
                                  file_text(PLAN, PLAN_KEYS, 1)), absurd_but_valid()),
       verb=st.sampled_from(["predict", "predict", "torchtitan", "megatron", "deepspeed"]),
       refs=st.tuples(*[st.sampled_from(REFS)] * 3))
def test_cli_predict_and_export_exit_0_or_2(cli, files, verb, refs):
    paths = [_write(f"c{i}.yaml", f) for i, f in enumerate(files)]
    mp, cp, pp = [p if r == "file" else r for p, r in zip(paths, refs)]
    if verb == "predict":
        code = cli("predict", mp, "--cluster", cp, "--plan", pp, "--json")
    else:
        code = cli("export", pp, "--to", verb, "--model", mp, "--cluster", cp, "--json")
    assert code in (0, 2)


@fuzz(40)
@given(m=file_text(TINY_MODEL, MODEL_KEYS, 0), c=file_text(CLUSTER, CLUSTER_KEYS, 0),
       batch=st.sampled_from([8, 16, 1, 0, -4, 10**9]), seq=st.sampled_from([128, 64, 0, -1, 10**9]),
       huge=st.sampled_from([False, True, False]))
def test_cli_plan_exits_0_1_or_2(cli, m, c, batch, seq, huge):
    if huge:  # 10⁶ H100s: the search must still stop within its time limit
        c = b"nodes: 125000\ngpus_per_node: 8\ngpu: h100-sxm\n"
    code = cli("plan", _write("pm.yaml", m), "--cluster", _write("pc.yaml", c), "--global-batch-size", batch,
               "--seq-len", seq, "--time-limit", "0.5", "--json")
    assert code in (0, 1, 2)  # 1: searched, no plan fits

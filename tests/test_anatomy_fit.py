"""benchmarks/anatomy_fit.py: per-category constants recovered from kernel times, and the committed profile
consistent with the committed anatomy."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from benchmarks import anatomy_fit
from costmodel.hardware import load_profile

ROOT = Path(__file__).resolve().parents[1]

ENTRIES = {e["name"]: e for e in yaml.safe_load(anatomy_fit.PLANS.read_text())}
NAMES = ["g1-l1b-s2k-mb4", "g1-l8b8l-bf16-cmp", "g1-l8b8l-fp8-cmp", "g1-l1b-s4k-stateoff4-v2"]


def _synthetic(truth) -> list[dict]:
    """Anatomy records a GPU would report if ``truth`` (a profile) described it exactly."""
    out = []
    for name in NAMES:
        e = ENTRIES[name]
        parts = anatomy_fit.model_parts(e, truth)
        other = anatomy_fit.model_other(e, truth, parts)
        # only the float8 GEMMs carry cuBLASLt's float8 kernel names
        kernels = [{"name": "nvjet_sm90_qqtst_128x128", "s": parts["fp8_gemm"], "count": 1},
                   {"name": "nvjet_sm90_tst_256x128", "s": parts["gemm"], "count": 1}]
        offload = 0.0
        if e["plan"].get("offload_state_layers"):
            from costmodel import load_model
            offload = load_model(e["model"]).params_per_block() * e["plan"]["offload_state_layers"] / 2e9
        busy = parts["gemm"] + parts["fp8_gemm"] + parts["attention"] + other
        out.append({"name": name, "kernel_choices": {}, "busy_s": busy, "step_s": busy + 0.01 + offload, "top_kernels": kernels,
                    "by_category_s": {"gemm": parts["gemm"] + parts["fp8_gemm"], "attention": parts["attention"]}})
    return out


def test_fit_recovers_the_constants_the_kernel_times_were_made_with():
    base = load_profile(ROOT / "profiles" / "h200-measured.yaml")
    base = base.with_constants("test", in_training_gemm=1.0, in_training_fp8_gemm=1.0, in_training_attention=1.0,
                               elementwise_efficiency=0.8)
    truth = base.with_constants("test", in_training_gemm=1.25, in_training_fp8_gemm=0.8, in_training_attention=0.9,
                                elementwise_efficiency=0.5)
    fitted, lines = anatomy_fit.fit(_synthetic(truth), ENTRIES, base)
    assert [fitted[k] for k in anatomy_fit.IN_TRAINING] == pytest.approx([1.25, 0.8, 0.9], abs=0.02)
    assert fitted["elementwise_efficiency"] == pytest.approx(0.5, abs=0.01)
    assert fitted["cpu_adam_params_per_s"] == pytest.approx(2e9, rel=0.01)  # the idle beyond the plain plans'
    assert len(lines) == 2 + len(NAMES)


def test_committed_profile_holds_what_the_committed_anatomy_fits():
    # fails when the cost model changes the categories' formulas without `anatomy_fit.py --write`
    prof = load_profile(anatomy_fit.PROFILE)
    import json
    results = [r for r in json.loads(anatomy_fit.ANATOMY.read_text()) if "error" not in r]
    fitted, _ = anatomy_fit.fit(results, ENTRIES, prof)
    for k in (*anatomy_fit.IN_TRAINING, "elementwise_efficiency"):
        assert fitted[k] == pytest.approx(prof.const(k), abs=0.01), k
    assert dataclasses.asdict(prof)["cpu_adam_params_per_s"] == pytest.approx(fitted["cpu_adam_params_per_s"])

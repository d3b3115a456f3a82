"""launcher.gputools.profile_assemble: fabricated measurements become a valid profile; unmeasured fields stay
from base."""
import dataclasses

import numpy as np
import pytest
import yaml

from costmodel.fit import bus_factor, ring_steps
from costmodel.hardware import Curve, load_profile, parse_profile
from launcher.gputools.profile_assemble import (Measurements, assemble_profile, base_profile_for_gpu, merge_ranks,
                                                summary_lines)
from launcher.gputools.profile_shapes import AttentionShape, GemmShape

BASE = load_profile("h200")
GEMM_TRUE = Curve(max_eff=0.8, half_x=2e10, exponent=1.1)
ATTN_TRUE = Curve(max_eff=0.5, half_x=6e9, exponent=1.0)
LAT_S, BUSBW = 1.8e-5, 340.0


def _gemm_rows(curve: Curve, peak: float) -> list[dict]:
    shapes = [GemmShape(m, n, k) for m in (1024, 2048, 4096, 8192) for n, k in ((4096, 4096), (1024, 8192),
                                                                               (14336, 4096))]
    shapes += [GemmShape(s, s, s) for s in (1024, 2048, 8192)]
    return [{"m": s.m, "n": s.n, "k": s.k, "seconds": s.flops / (curve(s.flops) * peak * 1e12)} for s in shapes]


def _attn_rows() -> list[dict]:
    rows = []
    for seq in (1024, 2048, 4096, 8192, 16384):
        s = AttentionShape(max(1, 16384 // seq), 32, 8, seq, 128)
        rows.append({**dataclasses.asdict(s), "seconds": s.flops / (ATTN_TRUE(s.flops) * BASE.bf16_tflops * 1e12)})
    return rows


def _collectives(world: int) -> dict:
    sizes = [2.0**k for k in range(16, 31, 2)]
    return {op: [[b, ring_steps(op, world) * LAT_S + bus_factor(op, world) * b / (BUSBW * 1e9)] for b in sizes]
            for op in ("all_reduce", "all_gather", "reduce_scatter", "send_recv")}


def fake(**over) -> Measurements:
    m = Measurements(gpu_name="NVIDIA H200", torch_version="2.11.0+cu130", date="2026-01-01",
                     command="python -m launcher.gputools.profile --quick", world_size=1,
                     gemm=_gemm_rows(GEMM_TRUE, BASE.bf16_tflops), fp8_gemm=_gemm_rows(GEMM_TRUE, BASE.fp8_tflops),
                     attention=_attn_rows(), hbm_gbps=4213.7, h2d_gbps=54.2, d2h_gbps=51.9,
                     cpu_adam_params_per_s=3.1e8, cpu_adam_threads=4, kernel_launch_s=4.2e-6, memory_gib=138.9,
                     context_gib=0.71, h2d_compute_slowdown=0.013)
    return dataclasses.replace(m, **over)


def test_assembled_profile_parses_and_round_trips(tmp_path):
    prof = assemble_profile(fake(), BASE, name="h200-measured")
    assert parse_profile(yaml.safe_load(prof.to_yaml()), "mem") == prof
    path = tmp_path / "h200-measured.yaml"
    path.write_text(prof.to_yaml())
    assert load_profile(str(path)) == prof
    text = prof.to_yaml()
    points = len(prof.gemm.points) + len(prof.fp8_gemm.points) + len(prof.attention.points)
    curve_points = sum(len(pts) for t in (prof.intra_node, prof.inter_node) for by_n in t.curves.values()
                       for pts in by_n.values())
    assert sum(line.lstrip().startswith("- [") for line in text.splitlines()) == points + curve_points  # one a line


def test_measured_scalars_replace_the_base_and_the_rest_is_kept():
    prof = assemble_profile(fake(), BASE, name="h200-measured")
    assert (prof.hbm_gbps, prof.memory_gib, prof.context_gib) == pytest.approx((4213.7, 138.9, 0.71), rel=1e-3)
    assert prof.host_link_gbps == pytest.approx(51.9)  # the slower direction
    assert prof.cpu_adam_params_per_s == pytest.approx(3.1e8)
    assert prof.kernel_launch_s == pytest.approx(4.2e-6)
    assert prof.const("h2d_compute_slowdown") == 0.013
    assert prof.constants["h2d_compute_slowdown"].source.startswith("measured 2026-01-01 NVIDIA H200")
    # single GPU: links, comm overlap and the rest come from the base, with the base's sources
    assert prof.intra_node == BASE.intra_node and prof.inter_node == BASE.inter_node
    assert prof.constants["comm_compute_slowdown"] == BASE.constants["comm_compute_slowdown"]
    assert (prof.host_memory_gib, prof.fragmentation) == (BASE.host_memory_gib, BASE.fragmentation)
    assert prof.bf16_tflops == BASE.bf16_tflops and prof.name == "h200-measured"
    assert prof.records["host_copy"] == {"h2d_gbps": 54.2, "d2h_gbps": 51.9}


def test_source_line_says_measured_when_on_what_and_how():
    prof = assemble_profile(fake(), BASE, name="x")
    assert prof.source.startswith("measured 2026-01-01 NVIDIA H200 torch 2.11.0+cu130 "
                                  "(python -m launcher.gputools.profile --quick) on 1 GPU(s)")
    assert "from profile h200" in prof.source


def test_curves_are_fit_to_the_measured_points():
    prof = assemble_profile(fake(), BASE, name="x")
    for got, true in ((prof.gemm, GEMM_TRUE), (prof.fp8_gemm, GEMM_TRUE), (prof.attention, ATTN_TRUE)):
        assert got.max_eff == pytest.approx(true.max_eff, rel=0.01)
        assert got.half_x == pytest.approx(true.half_x, rel=0.02)
        assert got.exponent == pytest.approx(true.exponent, rel=0.02)
    assert len(prof.gemm.points) == len(fake().gemm)


def test_unmeasured_curves_and_scalars_keep_the_base():
    prof = assemble_profile(fake(fp8_gemm=[], fp8_note="compute capability (8, 0) < 8.9", hbm_gbps=None,
                                 h2d_gbps=None, d2h_gbps=None), BASE, name="x")
    assert prof.fp8_gemm == BASE.fp8_gemm and prof.fp8_tflops == BASE.fp8_tflops
    assert "fp8_gemm kept from base (compute capability (8, 0) < 8.9)" in prof.source
    assert prof.hbm_gbps == BASE.hbm_gbps and prof.host_link_gbps == BASE.host_link_gbps
    assert "host_copy" not in prof.records


def test_a_curve_that_cannot_be_fit_keeps_the_base_and_says_why():
    prof = assemble_profile(fake(attention=_attn_rows()[:2]), BASE, name="x")
    assert prof.attention == BASE.attention
    assert "attention kept from base (fit_curve needs points at 3 or more distinct sizes" in prof.source


def test_collectives_become_the_intra_node_curves_of_their_group_size_and_keep_the_table():
    prof = assemble_profile(fake(world_size=4, collectives=_collectives(4), comm_compute_slowdown=0.07,
                                 comm_efficiency=0.93), BASE, name="x")
    table = _collectives(4)
    for op in ("all_reduce", "all_gather", "reduce_scatter"):   # the measured times, back from the curves
        sizes = [b for b, _ in table[op]]
        assert prof.intra_node.time_s(op, 4, sizes) == pytest.approx([t for _, t in table[op]], rel=1e-3)
    assert 2 in prof.intra_node.curves["all_reduce"]              # other group sizes: the base's curves
    assert "send_recv" not in prof.intra_node.curves and "on 4 GPUs" in prof.intra_node.source
    assert prof.inter_node == BASE.inter_node
    coll = prof.records["collectives"]
    assert coll["world_size"] == 4
    assert coll["send_recv"]["bandwidth_gbps"] == pytest.approx(BUSBW, rel=1e-3)
    assert (coll["all_reduce"]["steps"], coll["all_gather"]["steps"]) == (6, 3)
    assert coll["all_reduce"]["latency_s"] == pytest.approx(LAT_S, rel=1e-3)
    assert len(coll["all_reduce"]["table"]) == 8
    assert (prof.const("comm_compute_slowdown"), prof.const("comm_efficiency")) == (0.07, 0.93)
    assert parse_profile(yaml.safe_load(prof.to_yaml()), "mem") == prof


def test_collectives_that_do_not_fit_an_alpha_beta_line_keep_their_table_in_the_records():
    flat = {op: [[b, 1e-3 / (1 + i)] for i, (b, _) in enumerate(rows)] for op, rows in _collectives(2).items()}
    prof = assemble_profile(fake(world_size=2, collectives=flat), BASE, name="x")
    entry = prof.records["collectives"]["all_gather"]
    assert "bandwidth_gbps" not in entry and "does not grow" in entry["fit_error"] and len(entry["table"]) == 8
    assert parse_profile(yaml.safe_load(prof.to_yaml()), "mem") == prof


def test_overlap_factors_are_clamped_to_physical_ranges():
    prof = assemble_profile(fake(world_size=2, collectives=_collectives(2), comm_compute_slowdown=-0.004,
                                 comm_efficiency=1.02, h2d_compute_slowdown=-0.01), BASE, name="x")
    assert [prof.const(k) for k in ("comm_compute_slowdown", "comm_efficiency", "h2d_compute_slowdown")] \
        == [0.0, 1.0, 0.0]


def test_a_gemm_faster_than_the_base_peak_raises_the_peak_and_says_so():
    rows = _gemm_rows(GEMM_TRUE, BASE.bf16_tflops * 1.5)  # a GPU faster than the base's datasheet
    prof = assemble_profile(fake(gemm=rows), BASE, name="x")
    best = max(2.0 * r["m"] * r["n"] * r["k"] / r["seconds"] / 1e12 for r in rows)
    assert prof.bf16_tflops == pytest.approx(best, abs=0.1)
    assert "bf16_tflops raised from 989" in prof.source
    assert prof.gemm.max_eff <= 1.0


def test_merge_ranks_takes_the_worst_rank():
    a = fake(world_size=2, collectives=_collectives(2), comm_efficiency=0.9, comm_compute_slowdown=0.05)
    slow = {op: [[b, 2 * s] for b, s in rows] for op, rows in _collectives(2).items()}
    b = fake(world_size=2, collectives=slow, hbm_gbps=4000.0, kernel_launch_s=9e-6, comm_efficiency=0.95,
             comm_compute_slowdown=0.08, memory_gib=None)
    m = merge_ranks([a, b])
    assert m.hbm_gbps == 4000.0 and m.kernel_launch_s == 9e-6
    assert m.comm_efficiency == 0.9 and m.comm_compute_slowdown == 0.08
    assert m.memory_gib == a.memory_gib  # None (not measured) does not win
    assert m.collectives["all_gather"] == slow["all_gather"]
    assert m.gemm == a.gemm


def test_merge_ranks_refuses_no_ranks():
    with pytest.raises(ValueError, match="every rank must report"):
        merge_ranks([])


@pytest.mark.parametrize("gpu,mem_gib,expected", [
    ("NVIDIA H200", 141, "h200"), ("NVIDIA H100 80GB HBM3", 80, "h100-sxm"), ("NVIDIA A100-SXM4-80GB", 80,
                                                                             "a100-80g"),
    ("NVIDIA A100-SXM4-40GB", 40, "a100-40g"), ("NVIDIA L4", 23, "l4"), ("NVIDIA B200", 180, "b200")])
def test_base_profile_is_chosen_by_device_name(gpu, mem_gib, expected):
    assert base_profile_for_gpu(gpu, mem_gib * 2**30) == expected


def test_unknown_gpu_asks_for_a_base_profile():
    with pytest.raises(ValueError, match="no datasheet profile for GPU 'NVIDIA L40S'; pass --base"):
        base_profile_for_gpu("NVIDIA L40S", 48 * 2**30)


def test_summary_reports_the_headline_numbers():
    m = fake(world_size=2, collectives=_collectives(2))
    prof = assemble_profile(m, BASE, name="x")
    text = "\n".join(summary_lines(prof, m, BASE))
    (row,) = [r for r in m.gemm if r["m"] == r["n"] == r["k"] == 8192]
    tflops = 2 * 8192**3 / row["seconds"] / 1e12
    assert "bf16 GEMM 8192^3 TFLOP/s" in text and f"{tflops:.1f}" in text
    assert "4214" in text  # HBM copy GB/s
    assert "all_gather alpha us/call / busbw GB/s" in text and f"{BUSBW:.1f}" in text
    assert np.isfinite(tflops)


def test_rowwise_float8_slowdown_is_the_median_ratio_over_shapes_measured_both_ways():
    tensorwise = fake().fp8_gemm
    rowwise = [dict(r, seconds=r["seconds"] * f) for r, f in zip(tensorwise[:3], (1.2, 1.3, 1.5))]
    rowwise.append({"m": 7, "n": 7, "k": 7, "seconds": 1.0})  # not measured tensorwise: ignored
    prof = assemble_profile(fake(fp8_rowwise_gemm=rowwise), BASE, name="x")
    assert prof.const("fp8_rowwise_gemm_slowdown") == pytest.approx(1.3)
    kept = assemble_profile(fake(), BASE, name="x").constants["fp8_rowwise_gemm_slowdown"]
    assert kept == BASE.constants["fp8_rowwise_gemm_slowdown"]   # not measured: the base's value and source


def test_a_one_gpu_emulated_comm_slowdown_says_how_it_was_measured():
    prof = assemble_profile(fake(comm_compute_slowdown=0.12, comm_overlap_note="emulated on one GPU: 18 SMs"),
                            BASE, name="x")
    c = prof.constants["comm_compute_slowdown"]
    assert c.value == 0.12 and "emulated on one GPU: 18 SMs" in c.source
    assert "emulated" not in prof.constants["h2d_compute_slowdown"].source

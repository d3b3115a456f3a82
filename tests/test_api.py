"""The notebook API (planner.predict / plan / sweep / pareto) and its plots."""
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

import planner  # noqa: E402
from costmodel import GiB
from costmodel import SpecError, load_cluster, load_model, load_plan, predict as cost  # noqa: E402
from costmodel.specs import RECIPES, ClusterSpec, ModelSpec  # noqa: E402
from planner import plots  # noqa: E402
from planner.space import SearchSpace  # noqa: E402
from planner.tuner import tune  # noqa: E402

warnings.filterwarnings("ignore", message=".*max_position_embeddings.*")
TINY = ModelSpec(name="tiny-0.5b", hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                 num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
FOUR_H100 = ClusterSpec(name="4xh100", nodes=1, gpus_per_node=4, gpu="h100-sxm")
BASE_70B = dict(global_batch_size=512, micro_batch_size=1, seq_len=4096, dp=64, tp=1, pp=1, zero=2,
                recompute="full", compile=True)


@pytest.fixture(scope="module")
def layouts():
    """70B on 64 H100s over tp x pp: fits, out-of-memory and impossible cells (tp 16 > 8 KV heads)."""
    return planner.sweep("llama3-70b", "8x8xh100", BASE_70B, tp=[1, 2, 4, 8, 16], pp=[1, 2, 4])


def test_import_planner_loads_nothing_heavy():
    code = ("import sys, planner; print([m for m in ('sympy', 'numpy', 'pandas', 'matplotlib', 'pulp', 'typer', "
            "'torch', 'costmodel') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
    assert planner.sweep is planner.api.sweep and planner.plots.pareto_front is plots.pareto_front


def test_figures_live_outside_pyplot_and_render_as_png():
    fig = plots.memory_breakdown(planner.predict("llama3-8b", "8xh100", "llama3-8b-fsdp"))
    assert fig.canvas.manager is None          # not registered with pyplot: nothing to close, any backend
    assert fig._repr_png_()[:4] == b"\x89PNG"    # what Jupyter shows for a cell ending with the figure


def test_predict_accepts_recipe_names_paths_and_spec_objects():
    paths = (RECIPES / "models/llama3-8b.yaml", RECIPES / "clusters/8xh100.yaml", RECIPES / "plans/llama3-8b-fsdp.yaml")
    expected = cost(*paths).step_time_s
    by_name = planner.predict("llama3-8b", "8xh100", "llama3-8b-fsdp")
    by_path = planner.predict(*paths)
    by_object = planner.predict(load_model(paths[0]), load_cluster(paths[1]), load_plan(paths[2]))
    by_dict = planner.predict("llama3-8b", "8xh100", load_plan(paths[2]).to_dict())
    for ev in (by_name, by_path, by_object, by_dict):
        assert ev.step_time_s == pytest.approx(expected, rel=1e-12)
    assert by_name.to_frame().loc[0, "cluster"] == "8xh100"


def test_predict_overrides_plan_keys():
    plan = load_plan(RECIPES / "plans/llama3-8b-fsdp.yaml")
    shorter = planner.predict("llama3-8b", "8xh100", plan, seq_len=4096, micro_batch_size=1)
    assert shorter.plan.seq_len == 4096 and shorter.plan.micro_batch_size == 1
    direct = cost("llama3-8b", "8xh100", plan.replace(seq_len=4096, micro_batch_size=1))
    assert shorter.step_time_s == pytest.approx(direct.step_time_s, rel=1e-12)
    assert shorter.peak_memory_bytes < planner.predict("llama3-8b", "8xh100", plan).peak_memory_bytes
    assert planner.predict("llama3-8b", "8xh100", plan, tp=2).plan.dp == 4   # dp follows tp and pp


def test_predict_raises_for_a_plan_that_cannot_run_and_for_unknown_keys():
    with pytest.raises(SpecError, match="tp: 3 does not divide"):
        planner.predict("llama3-8b", "8xh100", "llama3-8b-fsdp", tp=3)
    with pytest.raises(ValueError, match=r"'tpp' is not a plan key; valid keys: .*micro_batch_size"):
        planner.predict("llama3-8b", "8xh100", "llama3-8b-fsdp", tpp=2)


def test_out_of_memory_plan_is_an_evaluation_with_its_reason():
    ev = planner.predict("llama3-70b", "8x8xh100", BASE_70B, recompute="none")
    assert ev.prediction is not None and not ev.feasible
    assert "exceeds" in ev.reason and ev.reason == "; ".join(ev.prediction.reasons)
    row = ev.to_frame().iloc[0]
    assert not row.feasible and row.reason == ev.reason
    assert row.peak_memory_gib == pytest.approx(ev.peak_memory_bytes / GiB)
    assert row.peak_memory_gib > row.budget_gib


def test_sweep_over_tp_gives_one_row_per_point_with_dp_filling_the_cluster():
    sw = planner.sweep("llama3-70b", "8x8xh100", BASE_70B, tp=[1, 2, 4, 8])
    df = sw.to_frame()
    assert len(sw) == len(df) == 4
    assert df.tp.tolist() == [1, 2, 4, 8]
    assert df.dp.tolist() == [64, 32, 16, 8]
    assert all(e.plan.world_size == 64 for e in sw)


def test_sweep_keeps_infeasible_points_with_their_reasons(layouts):
    df = layouts.to_frame()
    assert len(df) == 15
    impossible = df[df.tp == 16]
    assert len(impossible) == 3 and not impossible.feasible.any()
    assert impossible.reason.str.contains("tp: 16 does not divide num_key_value_heads 8").all()
    assert impossible.step_time_s.isna().all()
    oom = df[~df.feasible & df.step_time_s.notna()]
    assert len(oom) > 0 and oom.reason.str.contains("exceeds").all()
    assert (df[df.feasible].reason == "").all() and df.feasible.any()


def test_sweep_turns_malformed_values_into_reasons():
    bad, good = planner.sweep("llama3-8b", "8xh100", "llama3-8b-fsdp", tp=["two", 2]).rows
    assert bad.plan is None and bad.reason == "tp: is 'two' (str); it must be an integer"
    assert good.prediction is not None and good.plan.dp == 4


def test_sweep_is_the_product_over_models_clusters_and_keys():
    models = ["llama3.2-1b", RECIPES / "models/llama3-8b.yaml"]
    clusters = ["8xh100", ClusterSpec(name="2x4xa100", nodes=2, gpus_per_node=4, gpu="a100-80g")]
    base = dict(global_batch_size=16, micro_batch_size=1, seq_len=2048, dp=8, tp=1, pp=1, zero=3, recompute="full")
    sw = planner.sweep(models, clusters, base, seq_len=[1024, 2048], recompute=["full", "selective"])
    df = sw.to_frame()
    assert len(df) == 16
    assert df.groupby(["model", "cluster"]).size().tolist() == [4, 4, 4, 4]
    assert sorted(set(df.cluster)) == ["2x4xa100", "8xh100"]
    assert sw.axes["seq_len"] == [1024, 2048] and sw.axes["model"] == ["llama3.2-1b", "llama3-8b"]
    assert all(e.plan.seq_len == e.point["seq_len"] for e in sw)
    # recipe names travel into the plan; a spec object leaves the key empty
    assert {e.plan.cluster for e in sw} == {"8xh100", None}


def test_sweep_accepts_plan_names_paths_dicts_and_objects():
    path = RECIPES / "plans/llama3-8b-fsdp.yaml"
    times = [[e.step_time_s for e in planner.sweep("llama3-8b", "8xh100", ref, micro_batch_size=[1, 2])]
             for ref in ("llama3-8b-fsdp", path, load_plan(path), load_plan(path).to_dict())]
    assert all(t == times[0] for t in times) and len(times[0]) == 2


def test_sweep_rejects_an_unknown_axis_naming_it_and_the_valid_keys():
    with pytest.raises(ValueError, match=r"sweep axis 'tensor_parallel' is not a plan key; valid keys: .*\btp\b"):
        planner.sweep("llama3-8b", "8xh100", "llama3-8b-fsdp", tensor_parallel=[1, 2])
    with pytest.raises(ValueError, match="'seq_len' has no values"):
        planner.sweep("llama3-8b", "8xh100", "llama3-8b-fsdp", seq_len=[])


def test_sweep_without_fit_dp_keeps_the_base_dp():
    sw = planner.sweep("llama3-8b", "8xh100", "llama3-8b-fsdp", fit_dp=False, tp=[1, 2])
    first, second = sw.rows
    assert first.prediction is not None
    assert second.prediction is None and "dp × cp × tp × pp = 8 × 1 × 2 × 1 = 16" in second.reason


def test_base_layers_per_stage_falls_back_to_even_where_it_does_not_fit():
    base = dict(global_batch_size=32, micro_batch_size=1, seq_len=2048, dp=4, tp=1, pp=2, zero=2,
                recompute="full", layers_per_stage=[10, 22])
    two, four = planner.sweep("llama3-8b", "8xh100", base, pp=[2, 4]).rows
    assert two.plan.layers_per_stage == [10, 22] and not two.notes
    assert four.plan.layers_per_stage is None and four.prediction is not None
    assert any("split evenly" in n for n in four.notes)


def test_plan_applies_pins_as_the_search_space():
    res = planner.plan(TINY, FOUR_H100, global_batch_size=16, seq_len=2048, top_k=3, tp=2, recompute="full")
    direct = tune(TINY, FOUR_H100, 16, 2048, SearchSpace(tp=2, recompute=("full",)), top_k=3)
    assert res.best is res.top[0] and res.best.plan == direct.best.plan
    assert all(e.plan.tp == 2 and e.plan.recompute != "selective" and e.feasible for e in res.top)
    df = res.to_frame()
    assert df["rank"].tolist() == list(range(1, len(res.top) + 1))
    assert df.step_time_s.is_monotonic_increasing


def test_plan_that_cannot_fit_returns_the_diagnosis():
    res = planner.plan(TINY, FOUR_H100, global_batch_size=16, seq_len=2048, tp=3)
    assert res.best is None and res.top == [] and res.diagnosis
    assert len(res.to_frame()) == 0
    with pytest.raises(ValueError, match=r"plan pin 'tensor' is not a search-space pin; valid keys: .*fp8_budget"):
        planner.plan(TINY, FOUR_H100, global_batch_size=16, seq_len=2048, tensor=2)


def test_pareto_front_is_exactly_the_nondominated_feasible_plans():
    sw = planner.sweep("llama3-70b", "8x8xh100", BASE_70B, tp=[2, 4], pp=[4, 8], recompute_layers=[0, 10, 20],
                       offload_state_layers=[0, 10])
    front = planner.pareto(sw)
    feasible = sw.feasible()
    dominates = lambda a, b: (a.step_time_s <= b.step_time_s and a.peak_memory_bytes <= b.peak_memory_bytes  # noqa
                              and (a.step_time_s, a.peak_memory_bytes) != (b.step_time_s, b.peak_memory_bytes))
    assert 1 < len(front) < len(feasible)
    for f in front:
        assert not any(dominates(e, f) for e in feasible)
    for e in feasible:
        assert e in front or any(dominates(f, e) or (f.step_time_s, f.peak_memory_bytes) ==
                                 (e.step_time_s, e.peak_memory_bytes) for f in front)


def test_memory_plot_stacks_each_pipeline_rank_up_to_its_peak():
    ev = planner.predict("llama3-8b", "8xh100", "llama3-8b-fsdp", pp=4, dp=2, zero=2, micro_batch_size=1)
    fig = plots.memory_breakdown(ev)
    ax = fig.axes[0]
    assert ax.containers and all(len(c) == 4 for c in ax.containers)
    totals = np.sum([[bar.get_height() for bar in c] for c in ax.containers], axis=0)
    peaks = [r["peak_memory_bytes"] / GiB for r in ev.prediction.ranks]
    assert np.allclose(totals, peaks, rtol=1e-9)
    assert len(ax.get_legend().get_texts()) == len(ax.containers) + 1   # terms + the budget line


def test_time_plot_has_one_bar_per_plan_summing_to_its_step_and_hatches_misfits():
    evs = [planner.predict("llama3-70b", "8x8xh100", BASE_70B, tp=t, pp=p, recompute=r)
           for t, p, r in ((8, 1, "full"), (4, 4, "selective"), (1, 1, "none"))]
    assert [e.feasible for e in evs] == [True, True, False]
    ax = plots.time_breakdown(evs).axes[0]
    assert all(len(c) == 3 for c in ax.containers)
    widths = np.sum([[bar.get_width() for bar in c] for c in ax.containers], axis=0)
    ys = [bar.get_y() for bar in ax.containers[0]]
    for ev, w, y in zip(evs, widths, ys):
        assert w == pytest.approx(ev.step_time_s, rel=1e-3)
    hatched = {bar.get_y() for c in ax.containers for bar in c if bar.get_hatch()}
    assert hatched == {ys[2]}
    with pytest.raises(ValueError, match="2 labels for 3 plans"):
        plots.time_breakdown(evs, labels=["a", "b"])


def test_heatmap_has_a_cell_per_layout_and_marks_the_infeasible_ones(layouts):
    ax = plots.tp_pp_heatmap(layouts).axes[0]
    values = ax.images[0].get_array()
    assert values.shape == (3, 5)                       # pp rows x tp columns
    tps, pps = [1, 2, 4, 8, 16], [1, 2, 4]
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(texts) == 15
    for e in layouts:
        i, j = pps.index(e.plan.pp if e.plan else e.point["pp"]), tps.index(e.point["tp"])
        if e.feasible:
            assert not values.mask[i, j] and texts[(i, j)] == f"{values[i, j]:,.0f}"
    for (i, j), text in texts.items():
        cell = [e for e in layouts if (e.point["pp"], e.point["tp"]) == (pps[i], tps[j])]
        if not any(e.feasible for e in cell):
            assert values.mask[i, j]
            assert text == ("✗ OOM" if any(e.prediction for e in cell) else "✗ n/a")
    assert [texts[(i, 4)] for i in range(3)] == ["✗ n/a"] * 3
    assert sum(t.startswith("✗ OOM") for t in texts.values()) > 0


def test_pareto_plot_draws_every_plan_and_the_front(layouts):
    ax = plots.pareto_front(layouts).axes[0]
    predicted = [e for e in layouts if e.prediction is not None]
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == len(predicted)
    front = planner.pareto(layouts)
    line = [ln for ln in ax.lines if ln.get_label().startswith("Pareto")][0]
    assert list(line.get_xdata()) == pytest.approx([e.peak_memory_bytes / GiB for e in front])
    with pytest.raises(ValueError, match="no evaluation with a prediction"):
        plots.pareto_front([e for e in layouts if e.prediction is None])

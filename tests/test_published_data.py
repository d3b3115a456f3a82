"""The published multi-GPU runs (benchmarks/data/published.yaml) and collective curves
(benchmarks/data/collectives-published.yaml) are well-formed data: every row replayable, split by the stated rule."""
import hashlib
import json
import warnings
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from benchmarks import fidelity

DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "data"
ROWS = yaml.safe_load((DATA / "published.yaml").read_text())
COLL = yaml.safe_load((DATA / "collectives-published.yaml").read_text())
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "measurements" / "h200x4-host-hw.jsonl"
ENGINES = {"megatron", "torchtitan", "deepspeed", "nemo", "other"}


def test_enough_rows_and_sources():
    assert len(ROWS) >= 30
    assert len({r["source"] for r in ROWS}) >= 5
    names = [r["name"] for r in ROWS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_row_is_complete_and_replayable(row):
    for key in ("name", "source", "split", "engine", "reference", "model", "cluster", "plan", "measured", "hardware"):
        assert row.get(key), key
    assert row["engine"] in ENGINES and row["split"] in ("fit", "holdout")
    m = row["measured"]
    assert m["tokens_per_s_per_gpu"] > 0 and m["conversion"]
    assert (m.get("memory_gib") is None) == (m.get("memory_kind") is None)
    assert m.get("memory_kind") in (None, "allocated", "reserved")
    # what the plan schema cannot express: context parallelism, float8 expert GEMMs, tensor-parallel attention
    # beside expert parallelism, DeepSeek's latent attention, asynchronous tensor parallelism
    assert set(row.get("unsupported", [])) <= {"cp", "ep", "fp8_experts", "expert_tp", "mla", "async_tp"}
    for what, word in (("cp", "fold"), ("async_tp", "async")):
        if what in row.get("unsupported", []):
            assert word in row["notes"].lower()   # the notes say how the plan approximates what the schema lacks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred, _ = fidelity.replay(row)     # under its engine's conventions and its GPU variant
        assert pred.step_time_s > 0
        for key in row.get("assumed", []):
            assert key in row["plan"] or key in ("compile",), key


def test_split_follows_the_stated_rule():
    by_src = defaultdict(list)
    for r in ROWS:
        by_src[r["source"]].append(r)
    for src, rows in by_src.items():
        ordered = sorted(rows, key=lambda r: hashlib.sha256(r["name"].encode()).hexdigest())
        assert [r["split"] for r in ordered] == ["fit" if i % 2 == 0 else "holdout" for i in range(len(rows))], src
    halves = {s: sum(r["split"] == s for r in ROWS) for s in ("fit", "holdout")}
    assert halves["holdout"] >= 12 and halves["fit"] >= 12


def test_collective_entries_are_well_formed():
    for e in COLL:
        assert e["reference"] and e["kind"] in ("measurement", "statement"), e
        if e["kind"] == "measurement":
            sizes = [p[0] for p in e["points"]]
            assert sizes == sorted(sizes) and all(b >= 0 for _, b in e["points"]), e["reference"]
        else:
            assert e["expected_busbw_GBps"]


@pytest.mark.skipif(not SHARED.is_file(), reason="shared measurements not checked out")
def test_local_h200_curves_copy_the_shared_measurements_exactly():
    recs = [json.loads(line) for line in SHARED.read_text().splitlines() if line.strip()]
    nccl = [r for r in recs if r["what"] == "nccl"]
    local = [e for e in COLL if e["reference"] == "../shared/measurements/h200x4-host-hw.jsonl"]
    assert {(e["collective"], e["ranks"]) for e in local} == {(c, n) for c in ("all_reduce", "all_gather",
                                                                                "reduce_scatter") for n in (2, 4)}
    for e in local:
        key = e["collective"].replace("_", "")
        want = [r[f"{key}_busbw"] for r in nccl if r["ranks"] == e["ranks"]]
        assert [b for _, b in e["points"]] == want

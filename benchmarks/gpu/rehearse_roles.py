"""Rehearse the rank roles of benchmarks/gpu/rehearse_roles.yaml on this machine's GPU (`loadmaster rehearse` on
each), one JSON line per role, and print the table of benchmarks/rehearse.py.

    python -m benchmarks.gpu.rehearse_roles --out DIR [--budget-s 300] [--only NAME ...] [--cpu-smoke]

A role still running when the budget is spent is the last one; the ones after it are skipped (listed).
``--cpu-smoke`` rehearses every entry shrunk to a tiny model on the CPU (the code path, not the numbers).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import yaml

from benchmarks.rehearse import summary_lines, table_lines
from costmodel import ModelSpec, load_model, parse_plan
from benchmarks.gpu.smoke import SMOKE_LAYERS, smoke_plan
from launcher.gputools.rehearse import pipeline_rank_of, rehearse

CASES = Path(__file__).resolve().parent / "rehearse_roles.yaml"
SMOKE = ModelSpec(name="smoke", hidden_size=64, intermediate_size=128, num_hidden_layers=16, num_attention_heads=8,
                  num_key_value_heads=8, vocab_size=256)


def _ranks(entry: dict, plan) -> list[int] | None:
    """Global ranks of an entry: ``ranks: roles`` (every distinct role), ``ranks: [...]`` (global ranks) or
    ``pp_ranks: [...]`` (rank 0 of each named pipeline rank's data- and tensor-parallel group)."""
    if "pp_ranks" in entry:
        return [p * (plan.world_size // plan.pp) for p in entry["pp_ranks"]]
    return None if entry["ranks"] == "roles" else list(entry["ranks"])


def role_entries(path: Path, only: list[str] | None, end: float, skipped: list[str]):
    """(entry, its plan, its model) of each role of a roles file in file order (``only``: the names to run, None:
    all) while ``time.monotonic()`` is before ``end``; the names the budget did not reach go in ``skipped``."""
    for e in yaml.safe_load(path.read_text()):
        if only and e["name"] not in only:
            continue
        if time.monotonic() > end:
            skipped.append(e["name"])
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = parse_plan(e["plan"], e["name"])
        yield e, plan, load_model(e["model"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for rehearse.jsonl")
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--cases", default=str(CASES), help="the roles file (default: rehearse_roles.yaml)")
    ap.add_argument("--only", nargs="*", default=None, help="entry names to run (default: all)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cpu-smoke", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rehearse.jsonl"
    lines, skipped = [], []
    for e, plan, model in role_entries(Path(a.cases), a.only, time.monotonic() + a.budget_s, skipped):
        if a.cpu_smoke:   # the tiny model: 4 heads per TP rank, the plan's layout, a short sequence
            moe = dict(num_experts=16, num_experts_per_tok=2, moe_intermediate_size=32,
                       num_shared_experts=min(model.num_shared_experts, 1)) if model.is_moe else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = parse_plan({**smoke_plan(plan.to_dict(), model.num_hidden_layers), "fp8_layers": 0},
                                  e["name"])
            model = dataclasses.replace(SMOKE, name=f"smoke-{model.name}", num_hidden_layers=SMOKE_LAYERS, **moe)
        try:
            res = rehearse(model, e["cluster"], plan, ranks=_ranks(e, plan), steps=a.steps, warmup_steps=1)
        except (ValueError, RuntimeError) as err:
            line = {"name": e["name"], "error": " ".join(str(err).split())[:500]}
            lines.append(line)
            path.open("a").write(json.dumps(line) + "\n")
            print(f"{e['name']}: {line['error']}", flush=True)
            continue
        for r in res.ranks:
            line = {"name": e["name"], "model": e["model"], "cluster": e["cluster"], "plan": plan.to_dict(),
                    "device": res.device, "pp_rank": pipeline_rank_of(plan, r.rank), **r.to_dict(),
                    "notes": res.notes}
            lines.append(line)
            with path.open("a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"{e['name']} pp{line['pp_rank']}: compute {r.step_time_s:.3f}s (model {r.predicted_compute_s:.3f}s)"
                  f", peak {r.peak_memory_bytes / 2**30:.2f} GiB (model {r.predicted_peak_bytes / 2**30:.2f})",
                  flush=True)
    print("\n".join(table_lines(lines)))
    print("\n".join(summary_lines(lines)))
    if skipped:
        print(f"skipped (budget): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The trainer on H200 GPUs: measured table, our wrappers vs a plain FSDP2 script, compile, float8.

    python benchmarks/trainer_gpu.py [--data benchmarks/data]

Reads the committed GPU results (benchmarks/gpu/README.md): launcher.runtime.bench lines in
``h200-{1,2}gpu-{sweep-a,sweep-b,grid}.jsonl`` and the plain FSDP2 runs in ``plain/*.jsonl``
(benchmarks/plain_fsdp2.py on the same plan entries). Prints
1. TABLE: step time, tokens/s/GPU, MFU, peak memory and prediction error of plans on 1 and 2 GPUs that
   between them turn every knob (the knob column says which), with the knobs no measured plan covers;
2. ours vs plain FSDP2 on the same plan (target: ours ≥ plain, within 2 % run-to-run noise);
3. compiled vs eager on the same plan (target: compiled faster);
4. float8 vs bf16, both compiled, at Llama-3-8B widths (target: float8 measurably faster; 1.34x was
   measured for one 8B block in isolation).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from costmodel import GiB

DATA = Path(__file__).resolve().parent / "data"
NOISE = 0.02

TABLE = [  # (plan name, what it shows)
    ("g1-l1b-s2k-z0", "zero 0 (replicated), 1 GPU"),
    ("g1-l1b-s4k-mb1x16", "16 micro-batches, gradient accumulation"),
    ("g1-l1b-s8k-full", "full AC, seq 8192"),
    ("g1-l1b-s8k-partial8", "partial AC (8 of 16 blocks)"),
    ("g1-l1b-s4k-actoff8", "activation offload"),
    ("g1-l1b-s4k-stateoff4", "state offload (CPU AdamW)"),
    ("g1-g13-s4k-sel-cmp", "selective AC + compile, MHA/GeLU model"),
    ("g1-l8b8l-fp8-cmp", "float8 tensorwise + compile, 8B widths"),
    ("g1-l8b8l-fp8row-cmp", "float8 rowwise + compile, 8B widths"),
    ("g1-l8b-s4k-full-mb1", "Llama-3-8B on one GPU, full AC"),
    ("g2-g13-dp2-z2", "DP 2, zero 2"),
    ("g2-g13-dp2-every", "DP 2, zero 3, reduce every micro-batch"),
    ("g2-g13-tp2", "TP 2 + sequence parallel"),
    ("g2-g13-tp2-nosp", "TP 2 without sequence parallel"),
    ("g2-g13-pp2-1f1b", "PP 2, 1F1B"),
    ("g2-g13-pp2-gpipe", "PP 2, GPipe"),
    ("g2-g13-pp2-int", "PP 2, interleaved 1F1B (2 virtual stages)"),
    ("g2-l8b-dp2-sel-cmp-fp8", "Llama-3-8B DP 2, selective AC, compile, float8"),
    ("g2-l8b-dp2-full-stateoff4", "Llama-3-8B DP 2, full AC, state offload"),
    ("g2-l8b-pp2-full", "Llama-3-8B PP 2, full AC"),
]
KNOBS = ["dp", "tp", "pp", "zero 0", "zero 2", "zero 3", "full AC", "partial AC", "selective AC", "activation offload",
         "state offload", "float8", "compile", "GPipe", "1F1B", "Interleaved1F1B", "micro-batches > 1"]
COMPILE_PAIRS = [("g1-l8b8l-bf16-eager", "g1-l8b8l-bf16-cmp"), ("g1-l8b8l-fp8-eager", "g1-l8b8l-fp8-cmp"),
                 ("t1-fsdp-full-mb1", "t1-fsdp-full-mb1-cmp"), ("t2-fsdp-full-mb1", "t2-fsdp-full-mb1-cmp"),
                 ("t2-fsdp-none-mb4", "t2-fsdp-none-mb4-cmp")]
FP8_PAIRS = [("g1-l8b8l-bf16-cmp", "g1-l8b8l-fp8-cmp"), ("g1-l8b8l-bf16-cmp", "g1-l8b8l-fp8row-cmp"),
             ("g2-l8b-dp2-sel-cmp", "g2-l8b-dp2-sel-cmp-fp8")]


def knobs_of(plan: dict) -> set[str]:
    """The KNOBS a plan turns."""
    out = set()
    for k in ("dp", "tp", "pp"):
        if plan.get(k, 1) > 1:
            out.add(k)
    out.add(f"zero {plan.get('zero', 3)}")
    rec, layers = plan.get("recompute", "none"), plan.get("recompute_layers")
    if rec == "full":
        out.add("partial AC" if layers else "full AC")
    elif rec == "selective":
        out.add("selective AC")
    if plan.get("offload_activation_layers"):
        out.add("activation offload")
    if plan.get("offload_state_layers"):
        out.add("state offload")
    if plan.get("fp8_layers"):
        out.add("float8")
    if plan.get("compile"):
        out.add("compile")
    if plan.get("pp", 1) > 1:
        out.add(plan.get("pp_schedule", "1F1B"))
    if plan["global_batch_size"] // (plan["micro_batch_size"] * plan["dp"]) > 1:
        out.add("micro-batches > 1")
    return out


def read(paths: list[Path]) -> dict[str, dict]:
    out = {}
    for p in paths:
        for line in p.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                out[d["name"]] = d
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _gib(x: float | None) -> float | None:
    return None if x is None else x / GiB


def _tps(d: dict | None) -> float | None:
    return None if d is None or d.get("oom") or d.get("error") else d.get("tokens_per_s_per_gpu")


def measured_table(runs: dict[str, dict]) -> list[str]:
    rows = ["| plan | shows | GPUs | step s | tok/s/GPU | MFU | peak GiB | err time | err mem |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    covered = set()
    for name, what in TABLE:
        d = runs.get(name)
        if d is None:
            rows.append(f"| {name} | {what} | | not measured | | | | | |")
            continue
        if d.get("oom") or d.get("error"):
            rows.append(f"| {name} | {what} | {d.get('world_size', '')} | {'OOM' if d.get('oom') else 'error'} "
                        "| | | | | |")
            continue
        covered |= knobs_of(d["plan"])
        err = d.get("error_pct") or {}
        rows.append(f"| {name} | {what} | {d.get('world_size')} | {d['step_time_s']:.3f} | "
                    f"{d['tokens_per_s_per_gpu']:,.0f} | {_fmt(d.get('mfu'), '.1%')} | "
                    f"{_fmt(_gib(d.get('peak_memory_bytes')), '.1f')} | "
                    f"{err.get('step_time_s', float('nan')):+.1f}% | "
                    f"{err.get('peak_memory_bytes', float('nan')):+.1f}% |")
    missing = [k for k in KNOBS if k not in covered]
    rows.append(f"\nknobs covered by measured plans: {len(KNOBS) - len(missing)}/{len(KNOBS)}"
                + (f"; not covered: {', '.join(missing)}" if missing else ""))
    return rows


def pair_table(runs: dict[str, dict], pairs: list[tuple[str, str]], title: str, other: dict[str, dict] | None = None
               ) -> list[str]:
    """Speed of the second of each pair over the first (tokens/s); ``other`` holds the second's runs."""
    rows = [f"| {title} | base tok/s/GPU | tok/s/GPU | speed-up |", "|---|---:|---:|---:|"]
    for a, b in pairs:
        ta, tb = _tps(runs.get(a)), _tps((other if other is not None else runs).get(b))
        if ta is None or tb is None:
            rows.append(f"| {a} → {b} | {ta or '-'} | {tb or '-'} | not measured |")
        else:
            rows.append(f"| {a} → {b} | {ta:,.0f} | {tb:,.0f} | {tb / ta:.3f}x |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args(argv)
    data = Path(args.data)
    bench = sorted(data.glob("h200-*gpu-*.jsonl"))
    if not bench:
        print(f"no measured runs under {data} (h200-*gpu-*.jsonl); run the GPU measurements first "
              "(benchmarks/gpu/README.md)", file=sys.stderr)
        return 1
    runs = read(bench)
    plain = read(sorted((data / "plain").glob("*.jsonl")))
    print("## trainer on H200: measured\n")
    print("\n".join(measured_table(runs)))
    print("\n## ours vs plain FSDP2 (same plan entry; ≥ 1.00x expected, within "
          f"{NOISE:.0%} noise)\n")
    rows = ["| plan | plain tok/s/GPU | ours tok/s/GPU | ours / plain | verdict |", "|---|---:|---:|---:|---|"]
    for name, p in plain.items():
        ours = _tps(runs.get(name))
        if ours is None:
            rows.append(f"| {name} | {p['tokens_per_s_per_gpu']:,.0f} | not measured | | |")
            continue
        r = ours / p["tokens_per_s_per_gpu"]
        rows.append(f"| {name} | {p['tokens_per_s_per_gpu']:,.0f} | {ours:,.0f} | {r:.3f}x | "
                    f"{'ok' if r >= 1 - NOISE else 'SLOWER'} |")
    print("\n".join(rows if plain else ["no plain FSDP2 runs (plain/*.jsonl)"]))
    print("\n## compiled vs eager (same plan otherwise)\n")
    print("\n".join(pair_table(runs, COMPILE_PAIRS, "eager → compiled")))
    print("\n## float8 vs bf16, both compiled, Llama-3-8B widths\n")
    print("\n".join(pair_table(runs, FP8_PAIRS, "bf16 → float8")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

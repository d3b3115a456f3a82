"""`loadmaster verify` on measured plans: the FSDP2 memory tracker's traced peak beside the measured peak and the
symbolic prediction (target: traced within 1 % of measured).

    python3 benchmarks/gpu/verify_runs.py --plans benchmarks/gpu/plans_1gpu.yaml --json OUT.json   # CUDA build
    python3 benchmarks/gpu/verify_runs.py --compare OUT.json benchmarks/data/h200-1gpu-sweep-*.jsonl  # any machine
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from costmodel import GiB

ROOT = Path(__file__).resolve().parents[2]


def trace_all(entries: list[dict], cluster: str, budget_s: float, out: Path | None) -> list[dict]:
    from launcher.gputools.verify import verify
    results, t0 = [], time.monotonic()
    for e in entries:
        if time.monotonic() - t0 > budget_s:
            results.append({"name": e["name"], "error": "skipped: --budget-s spent"})
            continue
        try:
            r = verify(e["model"], e.get("cluster", cluster), e["plan"])
            results.append({"name": e["name"], **r.to_dict()})
        except Exception as exc:  # noqa: BLE001 - one plan the tracer cannot replay must not end the sweep
            results.append({"name": e["name"], "error": f"{type(exc).__name__}: {exc}"[:400]})
        print(json.dumps(results[-1])[:300], flush=True)
        if out:
            out.write_text(json.dumps(results, indent=1) + "\n")
    return results


def compare(traced_path: Path, measured_paths: list[Path]) -> str:
    """Markdown table: measured, traced and predicted peak allocated memory of every plan traced and measured."""
    traced = {r["name"]: r for r in json.loads(traced_path.read_text())}
    measured = {}
    for p in measured_paths:
        for line in p.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                if d.get("peak_memory_bytes") and not d.get("oom"):
                    measured[d["name"]] = d
    rows = ["| plan | measured (GiB) | traced (GiB) | traced err | predicted (GiB) | predicted err | note |",
            "|---|---:|---:|---:|---:|---:|---|"]
    errs = []
    for name, t in traced.items():
        m = measured.get(name)
        if "peak_memory_bytes" not in t:  # the trace failed; "error" says why
            rows.append(f"| {name} | | | | | | {str(t.get('error'))[:90]} |")
            continue
        if m is None:
            continue
        if t.get("superseded"):
            why = t["superseded"][:60]
            rows.append(f"| {name} | {m['peak_memory_bytes'] / GiB:.2f} | | | | | superseded: {why}… |")
            continue
        mb, tb, pb = m["peak_memory_bytes"], t["peak_memory_bytes"], t["predicted_peak_memory_bytes"]
        note = "; ".join(n.split(":")[0] for n in t.get("notes", []))
        compiled = bool(m.get("plan", {}).get("compile"))
        if not compiled:
            errs.append(abs(tb / mb - 1))
        rows.append(f"| {name} | {mb / GiB:.2f} | {tb / GiB:.2f} | {100 * (tb / mb - 1):+.1f}% | {pb / GiB:.2f} | "
                    f"{100 * (pb / mb - 1):+.1f}% | {note} |")
    if errs:
        rows.append(f"\n{len(errs)} eager plans: traced peak median |err| {100 * statistics.median(errs):.1f}%, "
                    f"max {100 * max(errs):.1f}% (compiled plans are traced eager and not counted)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plans", nargs="*", default=[], help="launcher.runtime.bench plans files")
    ap.add_argument("--cluster", default="1xh200")
    ap.add_argument("--json", help="write the traces here (rewritten after every plan)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop tracing new plans after this long")
    ap.add_argument("--compare", nargs="+", metavar=("TRACED", "MEASURED"),
                    help="print traced vs measured from a results file and measured JSONL files, then exit")
    a = ap.parse_args(argv)
    if a.compare:
        if len(a.compare) < 2:
            ap.error("--compare needs the traced JSON and at least one measured JSONL file")
        print(compare(Path(a.compare[0]), [Path(p) for p in a.compare[1:]]))
        return 0
    if not a.plans:
        ap.error("--plans is required (or --compare)")
    import yaml
    entries = [e for p in a.plans for e in yaml.safe_load(Path(p).read_text())]
    trace_all(entries, a.cluster, a.budget_s, Path(a.json) if a.json else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

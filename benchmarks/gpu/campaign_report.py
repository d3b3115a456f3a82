"""Compact tables of a campaign's work directory (printed after each job and written to $OUT/summary.md)."""
from __future__ import annotations

import json
from pathlib import Path

from costmodel import GiB



def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file (a torn last line, from a killed writer, is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _f(x, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else "-"


def bench_table(lines: list[dict]) -> list[str]:
    rows = ["| plan | step s | tok/s/GPU | MFU | peak GiB | pred s | pred GiB | err t % | err mem % | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for ln in lines:
        pred, err = ln.get("predicted") or {}, ln.get("error_pct") or {}
        note = "OOM" if ln.get("oom") else ("crash" if ln.get("crash") else "")
        if ln.get("error") and not ln.get("oom"):
            note = f"{note} {ln['error'][:70]}".strip()
        peak = ln.get("peak_memory_bytes")
        rows.append(f"| {ln['name']} | {_f(ln.get('step_time_s'), '.3f')} "
                    f"| {_f(ln.get('tokens_per_s_per_gpu'), ',.0f')} | {_f(ln.get('mfu'), '.1%')} "
                    f"| {_f(peak / GiB if peak else None, '.1f')} "
                    f"| {_f(pred.get('step_time_s'), '.3f')} "
                    f"| {_f(pred['peak_memory_bytes'] / GiB if pred.get('peak_memory_bytes') else None, '.1f')} "
                    f"| {_f(err.get('step_time_s'), '+.1f')} | {_f(err.get('peak_memory_bytes'), '+.1f')} | {note} |")
    return rows


def plain_table(lines: list[dict]) -> list[str]:
    rows = ["| plan (plain FSDP2) | step s | tok/s/GPU | peak GiB |", "|---|---:|---:|---:|"]
    for ln in lines:
        peak = ln.get("peak_memory_bytes")
        rows.append(f"| {ln['name']} | {_f(ln.get('step_time_s'), '.3f')} "
                    f"| {_f(ln.get('tokens_per_s_per_gpu'), ',.0f')} | {_f(peak / GiB if peak else None, '.1f')} |")
    return rows


def loss_table(d: Path) -> list[str]:
    rows = []
    for s in sorted(d.glob("*/summary.json")):
        x = json.loads(s.read_text())
        losses = x.get("losses") or []
        tail = losses[-20:]
        first = losses[0] if losses else float("nan")
        rows.append(f"{s.parent.name}: {x.get('steps_done')} steps, loss {first:.3f} -> "
                    f"last-20 mean {sum(tail) / max(1, len(tail)):.4f}, step {_f(x.get('step_time_s'), '.3f')} s, "
                    f"peak {_f((x.get('peak_memory_bytes') or 0) / GiB, '.1f')} GiB")
    return rows


def log_tail(d: Path, n: int, start: str | None = None) -> list[str]:
    """The last ``n`` lines of the job's log (from the last line starting with ``start``, when given)."""
    p = d / "log.txt"
    if not p.is_file():
        return []
    lines = [ln for ln in p.read_text(errors="replace").splitlines() if not ln.startswith(("W1", "[rank"))]
    if start:
        idx = [i for i, ln in enumerate(lines) if ln.startswith(start)]
        if idx:
            return lines[idx[-1]:idx[-1] + n]
    return lines[-n:]


def job_table(name: str, d: Path) -> str:
    """The compact result table of one job directory."""
    if (d / "bench.jsonl").is_file():
        rows = bench_table(read_jsonl(d / "bench.jsonl"))
    elif (d / "plain.jsonl").is_file():
        rows = plain_table(read_jsonl(d / "plain.jsonl"))
    elif name.startswith("loss"):
        rows = loss_table(d) or log_tail(d, 8)
    elif name.startswith("sdpa"):
        rows = log_tail(d, 14, start="| shape")
    elif name.startswith("profile"):
        rows = log_tail(d, 30)
    else:
        rows = log_tail(d, 10)
    return "\n".join([f"### {name}"] + rows)


def summary(work: Path, order: list[str], full: bool = True) -> str:
    """Status of every job that has a directory (``order`` first), then (``full``) each job's table."""
    out = ["## campaign status", "", "| job | state | rc | wall s | note |", "|---|---|---:|---:|---|"]
    dirs = [work / n for n in order if (work / n).is_dir()]
    dirs += sorted(d for d in work.iterdir() if d.is_dir() and d.name not in order) if work.is_dir() else []
    for d in dirs:
        st = json.loads((d / "status.json").read_text()) if (d / "status.json").is_file() else {}
        out.append(f"| {d.name} | {st.get('state', '?')} | {st.get('rc', '')} | {st.get('wall_s', '')} "
                   f"| {st.get('note', '')} |")
    if full:
        for d in dirs:
            out += ["", job_table(d.name, d)]
    return "\n".join(out) + "\n"

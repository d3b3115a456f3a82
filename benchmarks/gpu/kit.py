"""What the kernel and runtime GPU scripts share: their command line, a deadline, JSON Lines, the short table they print
last, and the wheels (TorchTitan, liger-kernel, torchao) installed from ``.whl`` on a machine without internet.

Every script runs as ``python -m benchmarks.gpu.NAME --out DIR --budget-s S [--cpu-smoke]``: it writes its JSON or
JSON Lines into DIR as results come (a script cut short keeps what it finished), stops starting new work when the
budget would be exceeded, and ends with a short table. ``--cpu-smoke`` runs it on a tiny model on the CPU (gloo),
to check it here before a GPU call.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl"
SITE = Path(os.environ.get("LOADMASTER_WHEEL_SITE", "/tmp/site"))
TINY = ROOT / "benchmarks" / "gpu" / "models" / "tiny-smoke.yaml"


def parser(description: str) -> argparse.ArgumentParser:
    """--out DIR, --budget-s S, --cpu-smoke: the command line every script takes (and adds to)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=True, help="directory for this script's JSON / JSON Lines")
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall seconds this script may take")
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny model on the CPU: checks the script, no GPU")
    return ap


class Deadline:
    """Wall-clock budget of a script: ``left()`` seconds remain; ``allows(s)`` whether work of ~s seconds fits."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget_s = time.monotonic(), budget_s

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def allows(self, estimate_s: float) -> bool:
        return self.left() > estimate_s


def append_jsonl(path: Path, line: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()] if Path(path).is_file() else []


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table: columns are (header, key, format spec); missing values print as '-'."""
    def cell(row, key, fmt):
        v = row.get(key)
        if v is None:
            return "-"
        try:
            return format(v, fmt)
        except (TypeError, ValueError):
            return str(v)
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, k, f) for _, k, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def install_wheels(whl_dir: Path | None = None, site: Path = SITE) -> Path | None:
    """Install the carried wheels into ``site`` (no index, no dependencies) and put it on sys.path after the
    environment's own packages, so what the environment has wins; None when there are no wheels. Child processes
    get it through PYTHONPATH (``child_env``)."""
    wheels = sorted(Path(whl_dir or WHEELS).glob("*.whl"))
    if not wheels:
        return None
    if not (site / ".installed").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                        *map(str, wheels)], check=True)
        shutil.rmtree(site / "test", ignore_errors=True)   # a wheel's stray top-level test package
        (site / ".installed").write_text("\n".join(w.name for w in wheels) + "\n")
    if str(site) not in sys.path:
        sys.path.append(str(site))
    return site


def child_env(site: Path | None) -> dict:
    """The environment of a child process: the repository and (after it) the wheel site on PYTHONPATH."""
    env = dict(os.environ)
    parts = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []) + ([str(site)] if site else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def device_name() -> str:
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def one_gpu_cluster() -> str:
    """The cluster recipe of this machine's one GPU for predictions beside measurements (1xh100 or 1xh200)."""
    return "1xh100" if "H100" in device_name() else "1xh200"


def versions() -> dict:
    """torch and the optional packages' versions (None: not importable)."""
    import importlib.metadata as md
    out = {}
    for name in ("torch", "torchtitan", "liger_kernel", "torchao", "triton"):
        try:
            out[name] = md.version(name.replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = None
    return out

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests without a CUDA GPU, and `gpus(n)` tests with fewer than n."""
    import torch
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        many = item.get_closest_marker("gpus")
        need = many.args[0] if many else 1 if "gpu" in item.keywords else 0
        if need > have:
            item.add_marker(pytest.mark.skip(reason=f"needs {need} CUDA GPU{'s' if need > 1 else ''}"))


@pytest.fixture
def run_cli():
    """Run the loadmaster CLI in-process; returns (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from planner.cli import app, register_all
    register_all()
    runner = CliRunner()

    def run(*args: str):
        res = runner.invoke(app, [str(a) for a in args])
        return res.exit_code, res.stdout, res.stderr
    return run


def pytest_terminal_summary(terminalreporter):
    """Print the fuzz suite's generated-case count and outcome (tests/test_fuzz.py fills FUZZ_SUMMARY)."""
    fuzz = next((m for name, m in sys.modules.items() if name.endswith("test_fuzz")), None)
    counts = getattr(fuzz, "FUZZ_SUMMARY", None)
    if counts:
        failed = sum("test_fuzz" in r.nodeid for r in terminalreporter.stats.get("failed", []))
        parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k != "cases")
        terminalreporter.write_line(f"fuzz: {counts['cases']} generated cases ({parts}); "
                                    f"{'no traceback, no hang' if not failed else f'{failed} failing fuzz tests'}")

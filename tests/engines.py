"""The engines' own parsers for tests/test_export.py: Megatron-LM's argument parser, TorchTitan's config manager
and DeepSpeed's config class, at the releases the exporters name.

- TorchTitan 0.3.0 and DeepSpeed 0.19.8 are in the `test` extra (pyproject.toml). TorchTitan's config code
  imports one module of Triton GPU kernels (``torchtitan.distributed.minimal_async_ep.kernels``) that parsing
  never calls; an empty stand-in replaces it for the test (Triton itself is a 150 MB GPU compiler).
- Megatron-LM's ``megatron/training/arguments.py`` ships in the megatron-core wheel from 0.17 on, and every
  such release declares Python >= 3.12, so pip will not install it as a dependency on CI's Python 3.11. The
  test fetches the pinned wheel from the package index with pip itself (``pip download --no-deps
  --ignore-requires-python``, 2.4 MB, cached under ~/.cache/loadmaster) and runs Megatron's parse_args and
  validate_args in a subprocess (tests/megatron_parse.py says how).

Where a parser is missing, its tests skip on a developer machine and fail under CI (``CI`` set), so a green CI
run always means the engines parsed the exports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import pytest

from launcher.export.megatron import MEGATRON_CORE

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loadmaster"
TRITON_KERNELS = "torchtitan.distributed.minimal_async_ep.kernels"


def unavailable(what: str, why: str) -> None:
    """Skip on a developer machine, fail under CI: a missing engine must never pass silently there."""
    message = f"{what} unavailable: {why}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run every engine's parser)")
    pytest.skip(message)


def torchtitan(monkeypatch) -> types.ModuleType:
    """``torchtitan.config`` with the Triton kernel module stood in for (see the module docstring)."""
    stand_in = types.ModuleType(TRITON_KERNELS)
    stand_in.__getattr__ = lambda name: None  # the kernels imported from it; never called while parsing
    monkeypatch.setitem(sys.modules, TRITON_KERNELS, stand_in)
    try:
        import torchtitan.config as config
    except ImportError as e:
        unavailable("torchtitan 0.3.0", str(e))
    return config


def deepspeed_config(monkeypatch) -> types.ModuleType:
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed.runtime.config as ds_config
    except ImportError as e:
        unavailable("deepspeed 0.19.8", str(e))
    return ds_config


def megatron_wheel() -> Path:
    """The unpacked megatron-core wheel (fetched once with pip, then cached)."""
    target = CACHE / f"megatron-core-{MEGATRON_CORE}"
    if (target / "megatron" / "training" / "arguments.py").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([sys.executable, "-m", "pip", "download", f"megatron-core=={MEGATRON_CORE}",
                              "--no-deps", "--ignore-requires-python", "--only-binary=:all:", "--dest", tmp],
                             capture_output=True, text=True, timeout=300)
        wheels = list(Path(tmp).glob("megatron_core-*.whl"))
        if res.returncode or not wheels:
            unavailable(f"megatron-core {MEGATRON_CORE}", f"pip download failed: {res.stderr.strip()[-300:]}")
        partial = Path(tempfile.mkdtemp(prefix=target.name, dir=CACHE))
        zipfile.ZipFile(wheels[0]).extractall(partial)
        os.replace(partial, target)  # atomic: a half-unpacked wheel is never taken for the cache
    return target


def megatron_parse(cases: list[dict]) -> list[dict]:
    """Megatron's parse_args + validate_args on each ``{"argv": [...], "env": {...}}``; one subprocess for all."""
    wheel = megatron_wheel()
    with tempfile.TemporaryDirectory() as tmp:
        cases_path, out_path = Path(tmp, "cases.json"), Path(tmp, "out.json")
        cases_path.write_text(json.dumps(cases))
        res = subprocess.run([sys.executable, str(HERE / "megatron_parse.py"), str(wheel), str(cases_path),
                              str(out_path)], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0 and out_path.is_file(), res.stderr[-3000:]
        return json.loads(out_path.read_text())

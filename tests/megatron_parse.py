"""Megatron-LM's own argument parser and checks, run on loadmaster's Megatron exports in a subprocess of
tests/engines.py: ``python tests/megatron_parse.py WHEEL_DIR CASES.json OUT.json``.

Each case is ``{"argv": [...], "env": {...}}``: the arguments of ``pretrain_gpt.py`` and the environment the
exported launch line sets (WORLD_SIZE included). For each, ``megatron.training.arguments.parse_args`` (argparse
over every Megatron flag, with their types and choices) and ``validate_args`` (Megatron's consistency checks:
world size against TP × PP, batch against micro-batch × DP, pipeline layer splits, recompute, FSDP and
precision options) run as ``pretrain_gpt.py`` runs them; OUT.json gets the parsed values or the error.

The megatron-core wheel (0.17 and later ship megatron/training) declares Python >= 3.12. On 3.11 its argument
code runs with two shims, only in this process: ``typing.override`` (3.12's decorator, which only marks a
method) and an empty stand-in for ``megatron.core.transformer.moe.ops.paged_stash``, the one module of Triton
GPU kernels imported unconditionally (argument parsing never calls it). ``get_device_arch_version`` answers 9 and
``torch.cuda.get_device_capability`` (asked for --moe-grouped-gemm) (9, 0): Hopper, the shipped clusters' GPUs,
because this machine has no GPU to ask.
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import sys
import types
import typing
import warnings

STUBBED = "megatron.core.transformer.moe.ops.paged_stash"


class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == STUBBED else None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = lambda attr: None  # kernel names imported from it; never called here
        return module

    def exec_module(self, module):
        pass


def _raise(self, message):  # argparse would print usage and exit; report the message instead
    raise ValueError(message)


def main(wheel_dir: str, cases_path: str, out_path: str) -> None:
    warnings.simplefilter("ignore")
    if not hasattr(typing, "override"):
        typing.override = lambda method: method
    sys.meta_path.insert(0, _Stub())
    sys.path.insert(0, wheel_dir)
    import megatron.training.arguments as megatron_args
    megatron_args.get_device_arch_version = lambda: 9
    megatron_args.torch.cuda.get_device_capability = lambda device=None: (9, 0)
    argparse.ArgumentParser.error = _raise
    results = []
    for case in json.loads(open(cases_path).read()):
        saved = dict(os.environ)
        os.environ.update(case["env"])
        sys.argv = ["pretrain_gpt.py", *case["argv"]]
        try:
            args = megatron_args.parse_args()
            megatron_args.validate_args(args, {})
            results.append({"ok": True, "args": {k: v for k, v in vars(args).items()
                                                 if isinstance(v, (int, float, str, bool, type(None)))}})
        except Exception as e:  # every failure is the answer for this case
            results.append({"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"})
        finally:
            os.environ.clear()
            os.environ.update(saved)
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""Distributed checkpoints (DCP) that are never loaded half-written, and load under any other plan.

Layout: ``RUN/checkpoints/step-XXXXXXXX`` (X = optimizer steps done). Every rank writes into
``step-XXXXXXXX.tmp``; after a barrier rank 0 adds ``loadmaster.json`` and renames the directory, so a
directory without the ``.tmp`` suffix is complete by construction. Resume still verifies it (DCP's
``.metadata``, our marker, every shard file as long as the metadata says) and skips a torn one with a warning.
Model and optimizer are saved by FQN through ``get_state_dict`` (DTensor shards): DCP reshards on load, so a
checkpoint saved under dp=4 loads under dp=2 × tp=2, or under another pipeline split.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

_NAME = re.compile(r"^step-(\d{8})$")
MARKER = "loadmaster.json"
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: Path) -> tuple[bool, str]:
    """Whether ``path`` is a whole checkpoint, and if not, why."""
    if not _NAME.match(path.name):
        return False, "not a step-XXXXXXXX directory"
    if not (path / MARKER).is_file():
        return False, f"no {MARKER} (the save did not finish)"
    if not (path / ".metadata").is_file():
        return False, "no DCP .metadata"
    try:
        meta = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # a truncated pickle raises anything from EOFError to UnpicklingError
        return False, f"unreadable .metadata ({type(e).__name__})"
    need: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for rel, size in need.items():
        f = path / rel
        if not f.is_file() or f.stat().st_size < size:
            return False, f"shard {rel} is missing or shorter than its {size} bytes"
    return True, ""


def newest_complete(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir``; torn ones are skipped with a warning."""
    if not ckpt_dir.is_dir():
        return None
    for path in sorted(ckpt_dir.iterdir(), key=lambda p: p.name, reverse=True):
        if path.name.endswith(".tmp") or not path.is_dir():
            continue
        ok, why = is_complete(path)
        if ok:
            return path
        warnings.warn(f"skipping torn checkpoint {path}: {why}", stacklevel=2)
    return None


class Checkpointer:
    """Saves and loads model parts, their optimizers, the LR schedule, train progress and per-rank RNG."""

    def __init__(self, run_dir: str | os.PathLike, *, keep: int) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    def _states(self, parts: list[nn.Module], optimizers: list[torch.optim.Optimizer]):
        model_sd, optim_sd, keys = {}, {}, []
        for part, opt in zip(parts, optimizers):
            msd, osd = get_state_dict(part, opt, options=_OPTIONS)
            keys.append((list(msd), list(osd)))
            model_sd.update(msd)
            optim_sd.update(osd)
        return model_sd, optim_sd, keys

    @staticmethod
    def _rng_state() -> dict[str, torch.Tensor]:
        rank = dist.get_rank()
        out = {f"rank{rank}.cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            out[f"rank{rank}.cuda"] = torch.cuda.get_rng_state()
        return out

    def save(self, step: int, *, parts, optimizers, schedulers, train_state: dict) -> Path:
        """Write checkpoint ``step`` (collective: every rank calls it) and prune old ones; returns its path."""
        rank = dist.get_rank()
        final = self.dir / checkpoint_name(step)
        tmp = final.with_name(final.name + ".tmp")
        exists = [final.is_dir()]
        dist.broadcast_object_list(exists, src=0)
        if exists[0]:  # already saved (periodic save on the last step, then the final save)
            return final
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        model_sd, optim_sd, _ = self._states(parts, optimizers)
        state = {"model": model_sd, "optimizer": optim_sd, "lr_scheduler": schedulers[0].state_dict(),
                 "train": dict(train_state, world_size=dist.get_world_size()), "rng": self._rng_state()}
        dcp.save(state, checkpoint_id=str(tmp))
        dist.barrier()
        if rank == 0:
            (tmp / MARKER).write_text(json.dumps(dict(train_state, world_size=dist.get_world_size())))
            os.replace(tmp, final)
            self._prune()
        dist.barrier()
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.dir.iterdir() if _NAME.match(p.name))
        for old in done[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.dir.glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    def find_resume(self) -> Path | None:
        """Rank 0 picks the newest complete checkpoint; every rank gets the same answer."""
        pick = [None]
        if dist.get_rank() == 0:
            found = newest_complete(self.dir)
            pick[0] = str(found) if found else None
        dist.broadcast_object_list(pick, src=0)
        return Path(pick[0]) if pick[0] else None

    def load(self, path: Path, *, parts, optimizers, schedulers) -> dict:
        """Load ``path`` into the given (already parallelised, materialised) objects; returns train state."""
        model_sd, optim_sd, keys = self._states(parts, optimizers)
        meta = dcp.FileSystemReader(str(path)).read_metadata()
        saved = set(meta.state_dict_metadata)
        train = json.loads((path / MARKER).read_text())
        state = {"model": model_sd, "optimizer": optim_sd, "lr_scheduler": schedulers[0].state_dict()}
        rng = {k: v for k, v in self._rng_state().items() if f"rng.{k}" in saved}
        if rng and train.get("world_size") == dist.get_world_size():
            state["rng"] = rng
        dcp.load(state, checkpoint_id=str(path))
        for (mkeys, okeys), part, opt in zip(keys, parts, optimizers):
            set_state_dict(part, opt, model_state_dict={k: state["model"][k] for k in mkeys},
                           optim_state_dict={k: state["optimizer"][k] for k in okeys}, options=_OPTIONS)
        for sched in schedulers:
            sched.load_state_dict(state["lr_scheduler"])
        if "rng" in state:
            rank = dist.get_rank()
            torch.set_rng_state(state["rng"][f"rank{rank}.cpu"])
            if f"rank{rank}.cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"][f"rank{rank}.cuda"])
        return train

"""Training tokens: a deterministic synthetic stream, or a flat binary token file (memory-mapped, as nanoGPT).

Both are indexed by a *global sample id* (step · global_batch_size + position in the global batch), so every
plan — whatever its dp, micro-batch size or pipeline — trains on the same global batch at the same step, and
a resumed run reads exactly what an uninterrupted one would (the data position is the step).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from costmodel import Plan, SpecError

_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
# Tokens checked per read while validating a file (bounded memory, whole file scanned once).
_SCAN_TOKENS = 1 << 26
# Files already scanned in this process (path, size, mtime, dtype, vocab): the entry and run() both validate.
_SCANNED: set[tuple] = set()


class SyntheticTokens:
    """Token ids drawn log-uniformly (P(k) ≈ 1/k, Zipf-like so the loss can fall below ln V) from a generator
    seeded by (seed, sample id): a pure function of both, independent of rank and plan."""

    def __init__(self, *, vocab_size: int, seq_len: int, seed: int) -> None:
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

    def sample(self, sample_id: int) -> torch.Tensor:
        """seq_len + 1 token ids (inputs and shifted labels) of one sequence, int64 on the CPU."""
        gen = torch.Generator().manual_seed((self.seed * 0x9E3779B1 + sample_id * 0x85EBCA77) % (1 << 62))
        u = torch.rand(self.seq_len + 1, generator=gen, dtype=torch.float64)
        return (self.vocab_size ** u).long().sub_(1).clamp_(0, self.vocab_size - 1)


class TokenFile:
    """A flat file of token ids (uint16 or uint32, no header). Sample i starts at token (i · seq_len) modulo the
    file's last full window, so consecutive samples tile the file and wrap around at its end (epochs)."""

    def __init__(self, path: str | os.PathLike, *, dtype: str, vocab_size: int, seq_len: int) -> None:
        if dtype not in _DTYPES:
            raise SpecError("<flags>", "data_dtype", f"is {dtype!r}", "use uint16 or uint32")
        self.path, self.dtype, self.vocab_size, self.seq_len = Path(path), dtype, vocab_size, seq_len
        self._tokens: np.ndarray | None = None

    def _open(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=_DTYPES[self.dtype], mode="r")
        return self._tokens

    def validate(self) -> None:
        """A SpecError if the file is missing, too small, of the wrong width or holds ids >= vocab_size."""
        item = np.dtype(_DTYPES[self.dtype]).itemsize
        if not self.path.is_file():
            raise SpecError(self.path, "--data", "no such file", "give the path of a flat binary token file")
        size = self.path.stat().st_size
        if size % item:
            raise SpecError(self.path, "--data-dtype", f"file size {size} B is not a multiple of {item} B "
                            f"({self.dtype})", "use the dtype the file was written with")
        n = size // item
        if n < self.seq_len + 1:
            raise SpecError(self.path, "--data", f"holds {n} tokens, fewer than one sequence of seq_len + 1 = "
                            f"{self.seq_len + 1}", "use a larger file or a shorter seq_len")
        if self.dtype == "uint16" and self.vocab_size > 65536:
            raise SpecError(self.path, "--data-dtype", f"uint16 cannot hold ids of a {self.vocab_size}-token "
                            "vocabulary", "use --data-dtype uint32")
        key = (str(self.path.resolve()), size, self.path.stat().st_mtime_ns, self.dtype, self.vocab_size)
        if key in _SCANNED:
            return
        tokens = self._open()
        for start in range(0, n, _SCAN_TOKENS):
            chunk = np.asarray(tokens[start:start + _SCAN_TOKENS])
            top = int(chunk.max())
            if top >= self.vocab_size:
                at = start + int(np.argmax(chunk >= self.vocab_size))
                raise SpecError(self.path, "--data", f"token id {top} at position {at} is >= vocab_size "
                                f"{self.vocab_size}", "tokenise with the model's tokenizer or check --data-dtype")
        _SCANNED.add(key)

    def sample(self, sample_id: int) -> torch.Tensor:
        tokens = self._open()
        windows = len(tokens) - self.seq_len  # start positions that leave seq_len + 1 tokens
        start = (sample_id * self.seq_len) % windows
        return torch.from_numpy(np.asarray(tokens[start:start + self.seq_len + 1]).astype(np.int64))


def make_source(*, data: str | None, dtype: str, vocab_size: int, seq_len: int, seed: int):
    """A TokenFile when ``data`` is given, else the synthetic stream."""
    if data is None:
        return SyntheticTokens(vocab_size=vocab_size, seq_len=seq_len, seed=seed)
    return TokenFile(data, dtype=dtype, vocab_size=vocab_size, seq_len=seq_len)


def sample_ids(plan: Plan, *, step: int, dp_rank: int) -> list[int]:
    """Global sample ids of one data-parallel rank's rows at ``step``, micro-batch by micro-batch.

    Micro-batch m of dp rank r holds global positions m·(mbs·dp) + r·mbs + [0, mbs); the rows of all ranks
    and micro-batches are exactly positions [0, global_batch_size) of the step.
    """
    mbs, dp = plan.micro_batch_size, plan.dp
    base = step * plan.global_batch_size
    return [base + m * mbs * dp + dp_rank * mbs + j for m in range(plan.num_microbatches) for j in range(mbs)]


def local_batch(source, plan: Plan, *, step: int, dp_rank: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, labels), each (num_microbatches · micro_batch_size, seq_len) int64 on ``device``."""
    rows = torch.stack([source.sample(i) for i in sample_ids(plan, step=step, dp_rank=dp_rank)])
    rows = rows.to(device, non_blocking=True)
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def samples_consumed(plan: Plan, step: int) -> int:
    """The data position after ``step`` optimizer steps, in global samples."""
    return step * plan.global_batch_size


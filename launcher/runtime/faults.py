"""Exit codes, preemption (SIGTERM), collective timeouts and test-only fault injection.

Exit codes of ``python -m launcher.runtime.train`` (and ``launcher.runtime.bench``):
  0   finished
  2   user error (bad plan, model, flags or data): one line on every rank, before any collective
  3   a collective timed out (``--collective-timeout-s``): another rank died, hung or diverged
  75  preempted: SIGTERM reached a rank; every rank saved a checkpoint and wrote RUN/preempted
      (75 is EX_TEMPFAIL of sysexits.h: "try again later" — resuming the run directory continues it)
"""
from __future__ import annotations

import os
import signal
import threading
import time

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_COLLECTIVE_TIMEOUT = 3
EXIT_PREEMPTED = 75


class Preemption:
    """Turns SIGTERM into a flag read at step boundaries (a handler must not save a checkpoint itself: the
    other ranks would be mid-collective)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def install(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is a collective that ran past the process-group timeout (gloo or NCCL wording)."""
    import torch.distributed as dist  # here, not above: launch imports the exit codes without torch
    text = str(error).lower()
    return isinstance(error, (RuntimeError, dist.DistError)) and ("timed out" in text or "timeout" in text)


def timeout_message(error: BaseException, timeout_s: float) -> str:
    import torch.distributed as dist
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    return (f"rank {rank}: a collective did not complete within --collective-timeout-s {timeout_s:g} s "
            f"(another rank died, hangs or took a different path); see the other ranks' logs [{first[:160]}]")


def inject_fault(step: int) -> None:
    """Test-only: ``LOADMASTER_FAULT=KIND:RANK:STEP`` makes global rank RANK, at the start of 0-based step STEP,
    ``sigterm`` itself, ``kill`` itself (SIGKILL) or ``hang`` (sleep without entering collectives). Fires only
    on a first attempt (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so a restarted job runs clean."""
    spec = os.environ.get("LOADMASTER_FAULT")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    import torch.distributed as dist
    kind, rank, at = spec.split(":")
    if int(rank) != dist.get_rank() or int(at) != step:
        return
    if kind == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    elif kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "hang":  # unresponsive, but (like a rank stuck outside Python) ended by torchrun's SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(10**6)
    else:
        raise ValueError(f"LOADMASTER_FAULT kind {kind!r} is not one of sigterm, kill, hang")

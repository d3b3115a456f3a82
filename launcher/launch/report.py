"""What a launch tells its user when it ends: the exit codes, and for a failed run which ranks failed and how,
the last complete checkpoint and the command that resumes it."""
from __future__ import annotations

import signal

from launcher.launch.rundir import last_checkpoint

EXIT_CODES = {
    0: "done (or nothing left to train)",
    1: "a rank failed with a Python exception (its traceback is in the run directory's logs)",
    2: "user error (plan, model, cluster, flags, GPUs): one line naming the value and the fix",
    3: "a collective or the rendezvous timed out (a rank died, hung or diverged)",
    75: "preempted: SIGTERM reached the ranks, a checkpoint was saved; launch the run directory to resume",
    137: "128 + 9: a rank was killed by SIGKILL (often the kernel's out-of-memory killer); in general 128 + N "
         "for signal N",
}
"""Exit codes of ``loadmaster launch`` and ``python -m launcher.launch``."""


def describe_failures(failures: dict, node_rank: int) -> list[str]:
    """One line per failed rank (torchrun's ProcessFailure records), the root cause first: torchrun stops the
    other ranks with SIGTERM once one fails, so those come last, marked as stopped."""
    stopped = -int(signal.SIGTERM)
    roots = any(f.exitcode != stopped for f in failures.values())
    ordered = sorted(failures.items(), key=lambda kv: (roots and kv[1].exitcode == stopped,
                                                       getattr(kv[1], "timestamp", 0), kv[0]))
    lines = []
    for rank, f in ordered:
        code = f.exitcode
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}" + (f" ({EXIT_CODES[code].split(':')[0]})" if code in EXIT_CODES else "")
        note = " (stopped by torchrun after the failure)" if roots and code == stopped else ""
        lines.append(f"rank {rank} (node {node_rank}, local rank {f.local_rank}) {how}{note}")
    return lines


def failure_report(launch, failures: dict, code: int, resume: str) -> str:
    """What a failed launch prints: which ranks failed and how, the last complete checkpoint, how to resume."""
    lines = [f"error: training failed (exit {code}):"]
    lines += [f"  {ln}" for ln in describe_failures(failures, launch.node_rank)]
    found = last_checkpoint(launch.run_dir)
    if found:
        lines.append(f"  last complete checkpoint: {found[1]} (step {found[0]} of {launch.steps})")
    else:
        lines.append("  no complete checkpoint: a resume starts at step 0 (--checkpoint-every N saves as it goes)")
    lines.append(f"  logs: {launch.run_dir / 'logs'}")
    lines.append(f"  resume with: {resume}")
    return "\n".join(lines)

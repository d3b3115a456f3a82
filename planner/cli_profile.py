"""`loadmaster profile`: measure this node's GPUs into a hardware profile (runs launcher.gputools.profile)."""
from __future__ import annotations

import subprocess
import sys

import typer

from .cli import check_flags, fail, guarded

NO_GPU = "profile needs a CUDA GPU; run it on a GPU node"


def cuda_devices() -> int:
    """Visible CUDA devices (0 without a GPU or with a CPU-only torch build)."""
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def profile_command(*, gpus: int, output: str | None, quick: bool, base: str | None, name: str | None,
                    as_json: bool) -> list[str]:
    """The process to start: the profiler alone for one GPU, under torchrun (one node) for several."""
    if gpus < 1:
        raise ValueError(f"--gpus {gpus} must be at least 1")
    flags = [*(["-o", output] if output else []), *(["--quick"] if quick else []),
             *(["--base", base] if base else []), *(["--name", name] if name else []),
             *(["--json"] if as_json else [])]
    if gpus == 1:
        return [sys.executable, "-m", "launcher.gputools.profile", *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            "-m", "launcher.gputools.profile", *flags]


def register(app: typer.Typer) -> None:
    @app.command("profile")
    @guarded
    def profile_cmd(
        output: str = typer.Option(None, "--output", "-o", help="Profile YAML to write "
                                   "(default: profiles/<gpu>-measured.yaml, used for clusters of that GPU)."),
        quick: bool = typer.Option(False, "--quick", help="Fewer shapes and repeats: under 2 minutes."),
        gpus: int = typer.Option(1, "--gpus", help="GPUs to measure together; 2+ adds NCCL collectives."),
        base: str = typer.Option(None, "--base", help="Profile for the fields not measured "
                                 "(default: the datasheet profile of the detected GPU)."),
        name: str = typer.Option(None, "--name", help="Profile name (default: <base>-measured)."),
        as_json: bool = typer.Option(False, "--json", help="Print the profile as JSON (summary on stderr)."),
    ) -> None:
        """Measure GEMM, attention, memory, copy, CPU AdamW and NCCL speeds on this node (a GPU node)."""
        check_flags(("--gpus", gpus, 1))
        visible = cuda_devices()
        if visible == 0:
            fail(NO_GPU)
        if gpus > visible:
            raise ValueError(f"--gpus {gpus} but only {visible} CUDA device(s) are visible; "
                             f"pass --gpus {visible} or fewer")
        cmd = profile_command(gpus=gpus, output=output, quick=quick, base=base, name=name, as_json=as_json)
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise typer.Exit(rc)

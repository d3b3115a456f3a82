"""Start a plan with torchrun on one node or many, from a run directory that alone reproduces and resumes it.

The request (flags) is checked against the plan, the model and the cluster; commands.py (beside this file) builds
the torchrun command and environment, rundir.py the run directory, slurm.py the sbatch script.
``launch RUN_DIR`` rebuilds the command from the directory's launch.json, and the trainer resumes from its
newest complete checkpoint. This process runs torchrun's agent itself (its API), to read each rank's exit code.

Entry without typer or pulp (GPU nodes): ``python -m launcher.launch PLAN_OR_RUN_DIR [flags] [-- trainer flags]``.
Exit codes: launcher/launch/report.py EXIT_CODES (the trainer's in launcher/runtime/faults.py), shown by
``loadmaster launch --help``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from costmodel import ClusterSpec, ModelSpec, Plan, SpecError, check_plan, load_cluster, load_model, load_plan
from costmodel.flags import FlagError, FlagParser, add_flags, from_namespace
from costmodel.specs import resolve
from costmodel.plan import world_formula
from launcher.launch.commands import DEFAULT_PORT, describe, format_description, launch_env, torchrun_argv
from launcher.launch.report import failure_report
from launcher.launch.rundir import preempted_since, read_run_dir, steps_done, summary_lines, write_atomic, write_run_dir
from launcher.runtime.faults import EXIT_COLLECTIVE_TIMEOUT, EXIT_PREEMPTED, EXIT_USER_ERROR

# launcher.runtime.train flags launch sets itself from the run directory; other trainer flags may follow `--`.
_OWNED_FLAGS = ("--plan", "--model", "--out", "--steps", "--data", "--checkpoint-every", "--cluster")


@dataclass(kw_only=True)
class LaunchRequest:
    """The flags of ``loadmaster launch`` and ``python -m launcher.launch``, generated from these fields (their
    docstrings are the help; costmodel/flags.py). None: taken from the plan, the cluster, the run directory or the
    host."""

    target: str = field(metadata={"positional": True, "metavar": "PLAN_OR_RUN_DIR"})
    """Plan YAML (path or shipped name under recipes/plans) or an existing run directory to resume."""
    model: str | None = field(default=None, metadata={"aliases": ("-m",), "metavar": "MODEL"})
    """Model recipe or path; default: the plan's model key."""
    cluster: str | None = field(default=None, metadata={"aliases": ("-c",), "metavar": "CLUSTER"})
    """Cluster recipe or path; default: the plan's cluster key, else the GPUs found here."""
    steps: int | None = None
    """Optimizer steps to reach (default 10; a run directory keeps its own)."""
    data: str | None = field(default=None, metadata={"metavar": "PATH"})
    """Flat binary token file; default: synthetic tokens."""
    out: str | None = field(default=None, metadata={"aliases": ("-o",), "metavar": "DIR"})
    """Run directory to create or continue; default runs/<plan>-<time> (required with several nodes)."""
    nnodes: int | None = None
    """Nodes; default: the cluster's, else 1."""
    node_rank: int = 0
    """This node's label (logs/node<R>; node 0 writes launch.json). c10d assigns the global ranks itself."""
    nproc_per_node: int | None = None
    """Processes per node; default: the cluster's GPUs per node, the GPUs here, or (CPU) world size / nodes."""
    rdzv_endpoint: str | None = field(default=None, metadata={"metavar": "HOST:PORT"})
    """HOST:PORT of the c10d rendezvous (needed with several nodes); single node: localhost:0."""
    rdzv_id: str | None = field(default=None, metadata={"metavar": "ID"})
    """Rendezvous id shared by all nodes; default: the run directory's name."""
    join_timeout_s: int | None = None
    """Seconds a rendezvous waits for all nodes (torchrun's join_timeout; default 600)."""
    max_restarts: int | None = None
    """Restarts of the whole group after a rank fails (default 0)."""
    checkpoint_every: int | None = None
    """Checkpoint every N steps (default 0: only at the end and on preemption)."""
    train_args: list[str] = field(default_factory=list, metadata={"flag": False})
    """Further launcher.runtime.train flags (given after ``--``)."""
    ignore_prediction: bool = False
    """Launch even when the cost model predicts the plan does not fit in memory."""
    dry_run: bool = False
    """Print the checks, the environment and each node's torchrun command; start and write nothing."""
    slurm: str | None = field(default=None, metadata={"metavar": "FILE"})
    """Write an sbatch script here (and the run directory) instead of running."""
    as_json: bool = field(default=False, metadata={"name": "--json"})
    """Print one JSON object (rank output goes to the logs only)."""


@dataclass(kw_only=True)
class Launch:
    """A checked launch: everything the commands, the environment and launch.json are built from."""

    run_dir: Path
    plan: Plan
    model: ModelSpec
    cluster: ClusterSpec | None
    nnodes: int
    nproc_per_node: int
    node_rank: int
    rdzv_endpoint: str | None
    rdzv_id: str
    join_timeout_s: int | None
    max_restarts: int
    steps: int
    data: str | None
    checkpoint_every: int
    train_args: list[str]
    gpu: bool
    """The ranks run on CUDA GPUs (NCCL settings in the environment)."""
    from_run_dir: bool

    def settings(self) -> dict:
        """What launch.json keeps so that ``launch RUN_DIR`` can rebuild the command."""
        keys = ("nnodes", "nproc_per_node", "rdzv_endpoint", "rdzv_id", "join_timeout_s", "max_restarts", "steps",
                "data", "checkpoint_every", "train_args")
        return {k: getattr(self, k) for k in keys}


def _load_plan_ref(ref: str) -> Plan:
    if Path(ref).is_file():
        return load_plan(ref)
    if os.sep in ref or ref.endswith((".yaml", ".yml")):
        raise SpecError(ref, "<file>", "no such plan file or run directory",
                        "give a plan YAML, a shipped plan name (recipes/plans) or a run directory")
    return load_plan(resolve(ref, "plans"))


def _check_flag_values(req: LaunchRequest) -> None:
    for name, value, low in (("nnodes", req.nnodes, 1), ("nproc_per_node", req.nproc_per_node, 1),
                             ("node_rank", req.node_rank, 0), ("max_restarts", req.max_restarts, 0),
                             ("join_timeout_s", req.join_timeout_s, 1), ("steps", req.steps, 1),
                             ("checkpoint_every", req.checkpoint_every, 0)):
        if value is not None and value < low:
            raise SpecError("<flags>", f"--{name.replace('_', '-')}", f"is {value}", f"use {low} or more")
    if req.data is not None and not Path(req.data).is_file():
        raise SpecError(req.data, "--data", "no such file", "give the path of a flat binary token file")
    if req.rdzv_endpoint is not None:
        host, _, port = req.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise SpecError("<flags>", "--rdzv-endpoint", f"{req.rdzv_endpoint!r} is not HOST:PORT",
                            f"use e.g. node001:{DEFAULT_PORT}")
    for arg in req.train_args:
        if arg.split("=", 1)[0] in _OWNED_FLAGS:
            raise SpecError("<flags>", arg.split("=", 1)[0], "is set by launch from the run directory",
                            "pass it to launch itself, before --")
    from launcher.runtime.train import parser
    try:
        parser(add_help=False).parse_args(["--plan", "-", *req.train_args])
    except FlagError as e:
        raise SpecError("<flags>", "-- (trainer flags)", e.problem, f"see {e.prog} --help") from None


def _from_run_dir(req: LaunchRequest, run_dir: Path) -> tuple[Plan, ModelSpec, ClusterSpec | None, dict]:
    for flag, value in (("--model", req.model), ("--cluster", req.cluster), ("--data", req.data),
                        ("--out", req.out)):
        if value is not None:
            raise SpecError(run_dir, flag, "is fixed by the run directory",
                            f"drop {flag}, or launch the plan YAML into a new --out")
    return read_run_dir(run_dir)


def _layout(req: LaunchRequest, plan: Plan, cluster: ClusterSpec | None, saved: dict, cuda_devices: int
            ) -> tuple[int, int]:
    """(nodes, processes per node), checked against the plan's world size and the cluster."""
    nnodes = req.nnodes or saved.get("nnodes")
    nproc = req.nproc_per_node or saved.get("nproc_per_node")
    if cluster is not None:
        for flag, given, has in (("--nnodes", nnodes, cluster.nodes), ("--nproc-per-node", nproc,
                                                                        cluster.gpus_per_node)):
            if given is not None and given != has:
                raise SpecError("<flags>", flag, f"is {given} but cluster {cluster.name} has {has}",
                                f"drop {flag} or pass another --cluster")
        nnodes, nproc = cluster.nodes, cluster.gpus_per_node
    nnodes = nnodes or 1
    if nproc is None:
        nproc = cuda_devices or plan.world_size // nnodes
    if nnodes * nproc != plan.world_size:
        raise SpecError(plan.source, "dp", f"{world_formula(plan)} but {nnodes} node(s) × {nproc} processes = "
                        f"{nnodes * nproc}",
                        f"launch {plan.world_size} processes in all or use a plan for {nnodes * nproc}")
    return nnodes, nproc


def visible_gpus() -> tuple[int, str | None]:
    """(CUDA devices visible here, the shipped profile name of device 0 or None)."""
    import torch
    if not torch.cuda.is_available():
        return 0, None
    from costmodel.hardware import profile_name_for_gpu
    props = torch.cuda.get_device_properties(0)
    return torch.cuda.device_count(), profile_name_for_gpu(props.name, props.total_memory)


def _check_gpus(plan: Plan, cluster: ClusterSpec, nproc: int, cuda_devices: int, gpu_kind: str | None) -> None:
    """A plan made for a cluster runs on that many GPUs of that kind: never as CPU processes, never elsewhere."""
    from costmodel.hardware import gpu_family
    where = f"{cluster.name or 'its cluster'}: {cluster.nodes} node(s) × {cluster.gpus_per_node} {cluster.gpu}"
    if cuda_devices == 0:
        raise SpecError(plan.source, "cluster", f"the plan needs {nproc} GPUs on this node ({where}); 0 are visible",
                        "use --dry-run or --slurm FILE to prepare it here, or a CPU plan (no cluster key, a tiny "
                        "model; see the README)")
    if cuda_devices < nproc:
        raise SpecError(plan.source, "cluster", f"the plan needs {nproc} GPUs on this node ({where}); "
                        f"{cuda_devices} are visible", "run on a node with enough GPUs or use a plan for fewer")
    if gpu_kind is not None and gpu_family(cluster.gpu) != gpu_kind:
        raise SpecError(plan.source, "cluster", f"the plan was made for {cluster.gpu} GPUs ({where}) but this node "
                        f"has {gpu_kind}", f"re-plan for these GPUs (loadmaster plan ... --cluster a {gpu_kind} "
                        f"cluster) or launch where {cluster.gpu} GPUs are")


def resolve_launch(req: LaunchRequest, *, cuda_devices: int | None = None, gpu_kind: str | None = None,
                   dry_run: bool = False) -> Launch:
    """Check the request against the plan, model, cluster and the GPUs here (``cuda_devices`` and ``gpu_kind``,
    the profile name of the visible GPUs; found when not given): SpecError naming the value and the fix."""
    _check_flag_values(req)
    if cuda_devices is None:
        cuda_devices, gpu_kind = visible_gpus()
    target = Path(req.target)
    if target.is_dir():
        run_dir = target
        plan, model, cluster, saved = _from_run_dir(req, target)
    else:
        plan = _load_plan_ref(req.target)
        model_ref = req.model or plan.model
        if not model_ref:
            raise SpecError(plan.source, "model", "the plan names no model", "pass --model")
        model = load_model(model_ref)
        cluster_ref = req.cluster or plan.cluster
        cluster = load_cluster(cluster_ref) if cluster_ref else None
        saved = {}
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(req.out) if req.out else Path("runs", f"{Path(plan.source).stem}-{stamp}")
    check_plan(plan, model, cluster)
    nnodes, nproc = _layout(req, plan, cluster, saved, cuda_devices)
    if req.node_rank >= nnodes:
        raise SpecError("<flags>", "--node-rank", f"is {req.node_rank} with {nnodes} node(s)",
                        f"use 0 … {nnodes - 1}")
    endpoint = req.rdzv_endpoint or saved.get("rdzv_endpoint")
    if nnodes > 1 and not dry_run:
        if endpoint is None:
            raise SpecError("<flags>", "--rdzv-endpoint", f"{nnodes} nodes need the rendezvous HOST:PORT",
                            f"pass --rdzv-endpoint HEAD_NODE:{DEFAULT_PORT} on every node, or use --slurm FILE")
        if not req.out and not target.is_dir():
            raise SpecError("<flags>", "--out", f"{nnodes} nodes must share one run directory",
                            "pass --out DIR on a shared filesystem, the same on every node")
    if cluster is not None and not dry_run:
        _check_gpus(plan, cluster, nproc, cuda_devices, gpu_kind)
    elif cuda_devices and not dry_run and cuda_devices < nproc:
        raise SpecError("<flags>", "--nproc-per-node", f"{nproc} processes but this node has {cuda_devices} GPUs",
                        "run on a node with enough GPUs or use a plan for fewer")
    def pick(value, key: str, default=None):  # a flag wins over the run directory's setting
        return value if value is not None else saved.get(key, default)
    default_id = re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir.resolve().name)
    return Launch(run_dir=run_dir, plan=plan, model=model, cluster=cluster, nnodes=nnodes, nproc_per_node=nproc,
                  node_rank=req.node_rank, rdzv_endpoint=endpoint, rdzv_id=pick(req.rdzv_id, "rdzv_id", default_id),
                  join_timeout_s=pick(req.join_timeout_s, "join_timeout_s"),
                  max_restarts=pick(req.max_restarts, "max_restarts", 0), steps=pick(req.steps, "steps", 10),
                  data=pick(str(Path(req.data).resolve()) if req.data else None, "data"),
                  checkpoint_every=pick(req.checkpoint_every, "checkpoint_every", 0),
                  train_args=[*saved.get("train_args", []), *req.train_args],
                  gpu=bool(cuda_devices) or cluster is not None, from_run_dir=target.is_dir())


def predict_launch(launch: Launch, *, ignore: bool = False):
    """costmodel's prediction for the launch (None without a cluster); SpecError if it does not fit."""
    if launch.cluster is None:
        return None
    from costmodel.prediction import predict
    pred = predict(launch.model, launch.cluster, launch.plan)
    if not pred.feasible and not ignore:
        raise SpecError(launch.plan.source, "plan", f"predicted not to fit on {launch.cluster.name}: "
                        f"{pred.reasons[0]}", "pick another plan (loadmaster plan) or pass --ignore-prediction")
    return pred


def job_exit_code(exitcodes: list[int]) -> int:
    """One exit code for the job from its failed ranks': user error, then timeout, then preemption, then the
    first other (a signal -N as the shell's 128 + N)."""
    for code in (EXIT_USER_ERROR, EXIT_COLLECTIVE_TIMEOUT, EXIT_PREEMPTED):
        if code in exitcodes:
            return code
    first = exitcodes[0] if exitcodes else 1
    return 128 - first if first < 0 else (first or 1)


def execute(launch: Launch, argv: list[str], env: dict[str, str]) -> int:
    """Run ``argv`` (a torchrun command) in this process, as torchrun's agent; returns the job's exit code."""
    import logging

    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    assert argv[0] == "torchrun", argv
    os.environ.update(env)
    # torchrun leaves its log files to the garbage collector, and logs each rank's end itself: our own report
    # (failure_report) says which rank failed and how, so neither reaches the console
    warnings.filterwarnings("ignore", category=ResourceWarning)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    resume = f"loadmaster launch {launch.run_dir} (or python -m launcher.launch {launch.run_dir})"
    t0 = time.time()
    try:
        torchrun.run(torchrun.parse_args(argv[1:]))
    except ChildFailedError as e:
        code = job_exit_code([f.exitcode for f in e.failures.values()])
        print(failure_report(launch, e.failures, code, resume), file=sys.stderr, flush=True)
        return code
    except RendezvousError as e:
        print(f"error: the rendezvous at {argv[argv.index('--rdzv-endpoint') + 1]} did not complete "
              f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); start every node with the same "
              "--rdzv-endpoint and --rdzv-id", file=sys.stderr, flush=True)
        return EXIT_COLLECTIVE_TIMEOUT
    except SignalException as e:  # this agent was signalled; it forwarded the signal and the ranks saved
        return EXIT_PREEMPTED if preempted_since(launch.run_dir, t0) else 128 + int(e.sigval)
    return EXIT_PREEMPTED if preempted_since(launch.run_dir, t0) else 0


def run_launch(req: LaunchRequest) -> int:
    """``loadmaster launch`` (and ``python -m launcher.launch``): dry run, sbatch script, or run this node."""
    dry_run, slurm, as_json = req.dry_run, req.slurm, req.as_json
    launch = resolve_launch(req, dry_run=dry_run or slurm is not None)
    launch.gpu = launch.gpu or slurm is not None  # an sbatch script asks for GPUs (--gpus-per-node)
    if launch.gpu and launch.cluster is None:
        import torch
        from launcher.runtime.metrics import detect_cluster
        launch.cluster = detect_cluster(torch.device("cuda", 0), nodes=launch.nnodes,
                                        gpus_per_node=launch.nproc_per_node) if torch.cuda.is_available() else None
    prediction = predict_launch(launch, ignore=req.ignore_prediction)
    env = launch_env(launch, cpu_count=os.cpu_count() or 1)
    if dry_run:
        d = describe(launch, env, prediction)
        print(json.dumps(d, indent=2) if as_json else format_description(d), flush=True)
        return 0
    if slurm is not None:
        from launcher.launch.slurm import sbatch_script
        script = sbatch_script(launch, env)
        write_run_dir(launch, command=["sbatch", str(slurm)], env=env, prediction=prediction)
        write_atomic(Path(slurm), script)
        print(json.dumps({"sbatch": str(slurm), "run_dir": str(launch.run_dir)}) if as_json else
              f"wrote {slurm} (run directory {launch.run_dir}); submit it with: sbatch {slurm}", flush=True)
        return 0
    done = steps_done(launch.run_dir)
    if done >= launch.steps:
        print(f"{launch.run_dir}: {done} of {launch.steps} steps already trained; pass --steps N to train further",
              file=sys.stderr, flush=True)
        return 0
    argv = torchrun_argv(launch, node_rank=launch.node_rank, console=not as_json)
    write_run_dir(launch, command=argv, env=env, prediction=prediction)
    if launch.max_restarts and not launch.checkpoint_every:
        print("warning: --max-restarts without --checkpoint-every: a restart begins again at step 0 (or the "
              "last checkpoint of an earlier launch)", file=sys.stderr, flush=True)
    print(f"loadmaster: node {launch.node_rank}: {shlex.join(argv)}", file=sys.stderr, flush=True)
    code = execute(launch, argv, env)
    if as_json:
        summary = launch.run_dir / "summary.json"
        print(json.dumps({"exit_code": code, "run_dir": str(launch.run_dir),
                          "summary": json.loads(summary.read_text()) if summary.is_file() else None}), flush=True)
    elif code in (0, EXIT_PREEMPTED):
        print("\n".join(summary_lines(launch.run_dir)), flush=True)
    if code == EXIT_PREEMPTED:
        print(f"preempted: a checkpoint was saved; resume with `loadmaster launch {launch.run_dir}` (or "
              f"`python -m launcher.launch {launch.run_dir}`)", file=sys.stderr, flush=True)
    return code


def parser() -> FlagParser:
    """``python -m launcher.launch``'s flags: LaunchRequest's fields (``parse_args`` raises FlagError)."""
    p = FlagParser(prog="python -m launcher.launch", description=__doc__.splitlines()[0],
                   epilog="Trainer flags follow `--` (python -m launcher.runtime.train --help lists them).")
    add_flags(p, LaunchRequest)
    return p


def parse_args(argv: list[str]) -> LaunchRequest:
    """Flags before ``--`` are launch's; after it, launcher.runtime.train's."""
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    return from_namespace(LaunchRequest, parser().parse_args(own), train_args=extra)


def main(argv: list[str] | None = None) -> int:
    try:
        return run_launch(parse_args(sys.argv[1:] if argv is None else argv))
    except (SpecError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR

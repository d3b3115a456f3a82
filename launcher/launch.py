"""Start a plan with torchrun on one node or many, from a run directory that alone reproduces and resumes it.

A run directory holds plan.yaml, model.yaml (the resolved ModelSpec), cluster.yaml (when known), launch.json
(settings, torchrun command, environment), prediction.json, logs/ (per-rank stdout/stderr in torchrun's
layout, ``logs/node<R>/<run>/attempt_<k>/<local rank>/``), and the trainer's metrics.jsonl, summary.json and
checkpoints/. ``launch RUN_DIR`` rebuilds the command from launch.json; the trainer resumes from the newest
complete checkpoint.

Entry without typer or pulp (GPU nodes): ``python -m launcher.launch PLAN_OR_RUN_DIR [flags] [-- trainer flags]``.
Exit codes are the trainer's (launcher/faults.py): 0 done, 2 user error, 3 collective or rendezvous timeout,
75 preempted (checkpoint saved; launch the run directory again to resume).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from costmodel import ClusterSpec, ModelSpec, Plan, SpecError, check_plan, load_cluster, load_model, load_plan
from costmodel.specs import as_dict, resolve
from launcher.faults import EXIT_COLLECTIVE_TIMEOUT, EXIT_PREEMPTED, EXIT_USER_ERROR

# Dry runs list every node up to this many, else the first and the last (the others differ only in rank).
SHOW_ALL_NODES = 4
DEFAULT_PORT = 29500
# launcher.train flags launch sets itself from the run directory; other trainer flags may follow `--`.
_OWNED_FLAGS = ("--plan", "--model", "--out", "--steps", "--data", "--checkpoint-every", "--cluster")
# Seconds torchrun waits, after forwarding SIGTERM to the ranks, before SIGKILL: the preemption checkpoint
# of a large model takes longer than torchrun's default 30 s.
SHUTDOWN_TIMEOUT_S = 300


@dataclass(kw_only=True)
class LaunchRequest:
    """The flags of ``loadmaster launch`` (None: taken from the plan, the cluster, the run directory or the host)."""

    target: str
    """Plan YAML (path or shipped name under recipes/plans) or an existing run directory."""
    model: str | None = None
    """Model recipe or path; default: the plan's ``model``."""
    cluster: str | None = None
    """Cluster recipe or path; default: the plan's ``cluster``, else the GPUs found here."""
    steps: int | None = None
    """Optimizer steps to reach (default 10; a run directory keeps its own)."""
    data: str | None = None
    """Flat binary token file; default: synthetic tokens."""
    out: str | None = None
    """Run directory to create or continue; default runs/<plan>-<time> (required with several nodes)."""
    nnodes: int | None = None
    """Nodes; default: the cluster's, else 1."""
    node_rank: int = 0
    """This node's label (logs/node<R>; node 0 writes launch.json). c10d assigns the global ranks itself."""
    nproc_per_node: int | None = None
    """Processes per node; default: the cluster's GPUs per node, the GPUs here, or (CPU) world size / nodes."""
    rdzv_endpoint: str | None = None
    """HOST:PORT of the c10d rendezvous (needed with several nodes); single node: localhost:0."""
    rdzv_id: str | None = None
    """Rendezvous id shared by all nodes; default: the run directory's name."""
    join_timeout_s: int | None = None
    """Seconds a rendezvous waits for all nodes (torchrun's join_timeout; default 600)."""
    max_restarts: int | None = None
    """Restarts of the whole group after a rank fails (default 0)."""
    checkpoint_every: int | None = None
    """Checkpoint every K steps (default 0: only at the end and on preemption)."""
    train_args: list[str] = field(default_factory=list)
    """Further launcher.train flags (given after ``--``)."""
    ignore_prediction: bool = False
    """Launch even when the cost model predicts the plan does not fit in memory."""


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
    if req.rdzv_endpoint is not None:
        host, _, port = req.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise SpecError("<flags>", "--rdzv-endpoint", f"{req.rdzv_endpoint!r} is not HOST:PORT",
                            f"use e.g. node001:{DEFAULT_PORT}")
    for arg in req.train_args:
        if arg.split("=", 1)[0] in _OWNED_FLAGS:
            raise SpecError("<flags>", arg.split("=", 1)[0], "is set by launch from the run directory",
                            "pass it to launch itself, before --")
    from launcher.train import parse_args
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse_args(["--plan", "-", *req.train_args])
    except SystemExit:
        lines = [x for x in err.getvalue().splitlines() if x.strip()] or ["--help is not a trainer flag"]
        raise SpecError("<flags>", "-- (trainer flags)", lines[-1].removeprefix("launcher.train: error: "),
                        "see python -m launcher.train --help") from None


def _from_run_dir(req: LaunchRequest, run_dir: Path) -> tuple[Plan, ModelSpec, ClusterSpec | None, dict]:
    for flag, value in (("--model", req.model), ("--cluster", req.cluster), ("--data", req.data),
                        ("--out", req.out)):
        if value is not None:
            raise SpecError(run_dir, flag, "is fixed by the run directory",
                            f"drop {flag}, or launch the plan YAML into a new --out")
    meta = run_dir / "launch.json"
    if not meta.is_file():
        raise SpecError(run_dir, "launch.json", "no such file: not a run directory",
                        "launch a plan YAML (with --out DIR) to create one")
    saved = json.loads(meta.read_text())["settings"]
    cluster = load_cluster(run_dir / "cluster.yaml") if (run_dir / "cluster.yaml").is_file() else None
    return load_plan(run_dir / "plan.yaml"), load_model(run_dir / "model.yaml"), cluster, saved


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
        raise SpecError(plan.source, "dp", f"dp × tp × pp = {plan.dp} × {plan.tp} × {plan.pp} = "
                        f"{plan.world_size} but {nnodes} node(s) × {nproc} processes = {nnodes * nproc}",
                        f"launch {plan.world_size} processes in all or use a plan for {nnodes * nproc}")
    return nnodes, nproc


def resolve_launch(req: LaunchRequest, *, cuda_devices: int | None = None, dry_run: bool = False) -> Launch:
    """Check the request against the plan, model and cluster (SpecError naming the value and the fix)."""
    _check_flag_values(req)
    if cuda_devices is None:
        import torch
        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
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
        run_dir = Path(req.out) if req.out else Path("runs", f"{Path(plan.source).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
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
    if cuda_devices and not dry_run and cuda_devices < nproc:
        raise SpecError("<flags>", "--nproc-per-node", f"{nproc} processes but this node has {cuda_devices} GPUs",
                        "run on a node with enough GPUs or use a plan for fewer")
    data = str(Path(req.data).resolve()) if req.data else saved.get("data")
    return Launch(run_dir=run_dir, plan=plan, model=model, cluster=cluster, nnodes=nnodes, nproc_per_node=nproc,
                  node_rank=req.node_rank, rdzv_endpoint=endpoint,
                  rdzv_id=req.rdzv_id or saved.get("rdzv_id") or re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir.resolve().name),
                  join_timeout_s=req.join_timeout_s or saved.get("join_timeout_s"),
                  max_restarts=req.max_restarts if req.max_restarts is not None else saved.get("max_restarts", 0),
                  steps=req.steps or saved.get("steps", 10), data=data,
                  checkpoint_every=req.checkpoint_every if req.checkpoint_every is not None
                  else saved.get("checkpoint_every", 0),
                  train_args=[*saved.get("train_args", []), *req.train_args],
                  gpu=bool(cuda_devices) or cluster is not None, from_run_dir=target.is_dir())


def train_flags(launch: Launch) -> list[str]:
    """launcher.train's flags: everything from the run directory, then the user's extra trainer flags."""
    rd = launch.run_dir.resolve()
    flags = ["--plan", str(rd / "plan.yaml"), "--model", str(rd / "model.yaml"), "--out", str(rd),
             "--steps", str(launch.steps)]
    if launch.data:
        flags += ["--data", launch.data]
    if launch.checkpoint_every:
        flags += ["--checkpoint-every", str(launch.checkpoint_every)]
    if launch.cluster is not None:
        flags += ["--cluster", str(rd / "cluster.yaml")]
    return flags + launch.train_args


def torchrun_argv(launch: Launch, *, node_rank: int | str, rdzv_endpoint: str | None = None,
                  rdzv_id: str | None = None) -> list[str]:
    """The torchrun command of one node (node_rank/endpoint/id may be shell variables, as in the sbatch script)."""
    endpoint = rdzv_endpoint or launch.rdzv_endpoint
    if endpoint is None:
        endpoint = "localhost:0" if launch.nnodes == 1 else f"HEAD_NODE:{DEFAULT_PORT}"
    argv = ["torchrun", "--nnodes", str(launch.nnodes), "--nproc-per-node", str(launch.nproc_per_node)]
    if launch.nnodes > 1:  # informational under c10d (it assigns ranks), but names the node in logs
        argv += ["--node-rank", str(node_rank)]
    argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id or launch.rdzv_id]
    if launch.join_timeout_s:
        argv += ["--rdzv-conf", f"join_timeout={launch.join_timeout_s}"]
    argv += ["--max-restarts", str(launch.max_restarts),
             "--log-dir", f"{launch.run_dir.resolve() / 'logs'}/node{node_rank}", "--tee", "3",
             "-m", "launcher.train", *train_flags(launch)]
    return argv


def launch_env(launch: Launch, *, cpu_count: int) -> dict[str, str]:
    """The variables a good launch sets for every rank (on top of the inherited environment)."""
    env = {
        # torchrun would set 1 (and warn); share the node's cores between its ranks instead
        "OMP_NUM_THREADS": str(max(1, cpu_count // launch.nproc_per_node)),
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_S),
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank${rank}]:",  # global rank on every teed line
    }
    if launch.gpu:
        env.update({
            "PYTORCH_ALLOC_CONF": "expandable_segments:True",  # segments grow in place: less fragmentation OOM
            # a failed or timed-out NCCL collective ends the rank, so torchrun restarts the group, never hangs
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
            # flight recorder: on a collective timeout every rank dumps its last collectives (which one hung)
            # (TORCH_FR_* are the names since torch 2.11; the TORCH_NCCL_* ones warn as deprecated)
            "TORCH_FR_BUFFER_SIZE": "20000",
            "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
            "TORCH_FR_DUMP_TEMP_FILE": str(launch.run_dir.resolve() / "comm_trace" / "rank_"),
            "NCCL_DEBUG": "WARN",
        })
    return env


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


def detect_cluster(launch: Launch) -> ClusterSpec | None:
    """The cluster these GPUs form (when none was named), so the run has a prediction beside its measurements."""
    import torch
    from launcher.metrics import gpu_profile_name
    gpu = gpu_profile_name(torch.device("cuda", 0)) if torch.cuda.is_available() else None
    if gpu is None:
        return None
    return ClusterSpec(nodes=launch.nnodes, gpus_per_node=launch.nproc_per_node, gpu=gpu,
                       name=f"{launch.nnodes}x{launch.nproc_per_node}x{gpu}")


def _write(path: Path, text: str) -> None:
    """Atomic write: other nodes sharing the run directory never read half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_run_dir(launch: Launch, *, command: list[str], env: dict[str, str], prediction) -> None:
    """Create or continue the run directory; refuse one that holds a different plan, model or cluster."""
    rd = launch.run_dir
    (rd / "logs").mkdir(parents=True, exist_ok=True)
    if launch.gpu:
        (rd / "comm_trace").mkdir(exist_ok=True)
    specs = {"plan.yaml": launch.plan.to_yaml(),
             "model.yaml": yaml.safe_dump(as_dict(launch.model), sort_keys=False)}
    if launch.cluster is not None:
        specs["cluster.yaml"] = yaml.safe_dump(as_dict(launch.cluster), sort_keys=False)
    for name, text in specs.items():
        path = rd / name
        if path.is_file() and yaml.safe_load(path.read_text()) != yaml.safe_load(text):
            raise SpecError(path, "<file>", "the run directory holds another run",
                            f"resume it with `loadmaster launch {rd}` or launch into a new --out")
        if not path.is_file() or not launch.from_run_dir:
            _write(path, text)
    if launch.node_rank == 0:
        meta = {"settings": launch.settings(), "command": command, "env": env,
                "launched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write(rd / "launch.json", json.dumps(meta, indent=2) + "\n")
        if prediction is not None:
            pred = prediction.to_dict()
            pred.pop("stages", None)
            _write(rd / "prediction.json", json.dumps(pred, indent=2, default=float) + "\n")


def job_exit_code(exitcodes: list[int]) -> int:
    """One exit code for the job from its failed ranks': user error, then timeout, then preemption, then the
    first other (a signal -N as the shell's 128 + N)."""
    for code in (EXIT_USER_ERROR, EXIT_COLLECTIVE_TIMEOUT, EXIT_PREEMPTED):
        if code in exitcodes:
            return code
    first = exitcodes[0] if exitcodes else 1
    return 128 - first if first < 0 else (first or 1)


def _preempted_since(run_dir: Path, t0: float) -> bool:
    marker = run_dir / "preempted"
    return marker.is_file() and marker.stat().st_mtime >= t0 - 1


def execute(launch: Launch, argv: list[str], env: dict[str, str]) -> int:
    """Run ``argv`` (a torchrun command) in this process, as torchrun's agent; returns the job's exit code."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    assert argv[0] == "torchrun", argv
    os.environ.update(env)
    t0 = time.time()
    try:
        with warnings.catch_warnings():  # torchrun leaves its log files to the garbage collector
            warnings.simplefilter("ignore", ResourceWarning)
            torchrun.run(torchrun.parse_args(argv[1:]))
    except ChildFailedError as e:
        return job_exit_code([f.exitcode for f in e.failures.values()])
    except RendezvousError as e:
        print(f"error: the rendezvous at {argv[argv.index('--rdzv-endpoint') + 1]} did not complete "
              f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); start every node with the same "
              "--rdzv-endpoint and --rdzv-id", file=sys.stderr, flush=True)
        return EXIT_COLLECTIVE_TIMEOUT
    except SignalException as e:  # this agent was signalled; it forwarded the signal and the ranks saved
        return EXIT_PREEMPTED if _preempted_since(launch.run_dir, t0) else 128 + int(e.sigval)
    return EXIT_PREEMPTED if _preempted_since(launch.run_dir, t0) else 0


def shown_nodes(nnodes: int) -> list[int]:
    return list(range(nnodes)) if nnodes <= SHOW_ALL_NODES else [0, nnodes - 1]


def describe(launch: Launch, env: dict[str, str], prediction) -> dict:
    """What a dry run prints (and --json emits): checks, environment, the torchrun line of each shown node."""
    p = launch.plan
    where = f"{launch.nnodes} node(s) × {launch.nproc_per_node} {'GPUs' if launch.gpu else 'CPU processes'}"
    checks = [f"world size: dp × tp × pp = {p.dp} × {p.tp} × {p.pp} = {p.world_size} = {where}"]
    if prediction is None:
        checks.append("memory: not predicted (no cluster: pass --cluster)")
    else:
        checks.append(f"memory: predicted peak {prediction.peak_memory_bytes / 2**30:.1f} GiB of "
                      f"{prediction.memory_capacity_bytes / 2**30:.1f} GiB per GPU "
                      f"({'fits' if prediction.feasible else 'DOES NOT FIT'}); predicted step "
                      f"{prediction.step_time_s:.3f} s, MFU {prediction.mfu:.1%}")
    commands = [{"node_rank": r, "argv": torchrun_argv(launch, node_rank=r)} for r in shown_nodes(launch.nnodes)]
    for c in commands:
        c["line"] = shlex.join(c["argv"])
    return {"run_dir": str(launch.run_dir), "resume": launch.from_run_dir, "model": launch.model.name,
            "cluster": launch.cluster.name if launch.cluster else None, "plan": p.to_dict(),
            "world_size": p.world_size, "nnodes": launch.nnodes, "nproc_per_node": launch.nproc_per_node,
            "checks": checks, "env": env, "commands": commands,
            "nodes_omitted": launch.nnodes - len(commands), "settings": launch.settings()}


def format_description(d: dict) -> str:
    lines = [f"run directory: {d['run_dir']}{' (resume)' if d['resume'] else ''}",
             f"model {d['model']}, cluster {d['cluster'] or '-'}"]
    lines += [f"check: {c}" for c in d["checks"]]
    lines.append("environment (every node):")
    lines += [f"  export {k}={shlex.quote(v)}" for k, v in d["env"].items()]
    more = f" ({d['nodes_omitted']} more differ only in --node-rank and --log-dir)" if d["nodes_omitted"] else ""
    lines.append(f"commands, {d['nnodes']} node(s){more}:")
    for c in d["commands"]:
        lines += [f"  # node {c['node_rank']}", f"  {c['line']}"]
    return "\n".join(lines)


def summary_lines(run_dir: Path) -> list[str]:
    """Measured vs predicted step time, memory, throughput and MFU from the run directory's summary.json."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return [f"{run_dir}: no summary.json yet"]
    s = json.loads(path.read_text())
    pred, err = s.get("predicted") or {}, s.get("error_pct") or {}
    lines = [f"{run_dir}: steps {s.get('start_step', 0)} → {s['steps_done']}, final loss {s['final_loss']:.4f}"
             f"{', preempted' if s.get('preempted') else ''}",
             f"{'':14}{'measured':>14}{'predicted':>14}{'error':>9}"]
    fmts = {"step_time_s": lambda v: f"{v:.4f} s", "peak_memory_bytes": lambda v: f"{v / 2**30:.2f} GiB",
            "tokens_per_s_per_gpu": lambda v: f"{v:,.0f}", "mfu": lambda v: f"{v:.1%}"}
    for key, label in (("step_time_s", "step time"), ("peak_memory_bytes", "peak memory"),
                       ("tokens_per_s_per_gpu", "tokens/s/GPU"), ("mfu", "MFU")):
        m, p = s.get(key), pred.get(key)
        if m is None and p is None:
            continue
        e = f"{err[key]:+.1f} %" if key in err else ""
        lines.append(f"{label:14}{fmts[key](m) if m is not None else '-':>14}"
                     f"{fmts[key](p) if p is not None else '-':>14}{e:>9}")
    if s.get("prediction_error"):
        lines.append(f"no prediction: {s['prediction_error']}")
    return lines


def run_launch(req: LaunchRequest, *, dry_run: bool = False, slurm: str | None = None, as_json: bool = False
               ) -> int:
    """``loadmaster launch`` (and ``python -m launcher.launch``): dry run, sbatch script, or run this node."""
    launch = resolve_launch(req, dry_run=dry_run or slurm is not None)
    if launch.gpu and launch.cluster is None:
        launch.cluster = detect_cluster(launch)
    prediction = predict_launch(launch, ignore=req.ignore_prediction)
    env = launch_env(launch, cpu_count=os.cpu_count() or 1)
    if dry_run:
        d = describe(launch, env, prediction)
        print(json.dumps(d, indent=2) if as_json else format_description(d), flush=True)
        return 0
    if slurm is not None:
        from launcher.slurm import sbatch_script
        script = sbatch_script(launch, env)
        write_run_dir(launch, command=["sbatch", str(slurm)], env=env, prediction=prediction)
        _write(Path(slurm), script)
        print(json.dumps({"sbatch": str(slurm), "run_dir": str(launch.run_dir)}) if as_json else
              f"wrote {slurm} (run directory {launch.run_dir}); submit it with: sbatch {slurm}", flush=True)
        return 0
    argv = torchrun_argv(launch, node_rank=launch.node_rank)
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
    return code


def parse_args(argv: list[str]) -> tuple[LaunchRequest, argparse.Namespace]:
    """Flags before ``--`` are launch's; after it, launcher.train's."""
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="launcher.launch", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("target", metavar="PLAN_OR_RUN_DIR")
    for name in ("model", "cluster", "data", "out", "rdzv-endpoint", "rdzv-id", "slurm"):
        p.add_argument(f"--{name}")
    for name in ("steps", "nnodes", "node-rank", "nproc-per-node", "join-timeout-s", "max-restarts",
                 "checkpoint-every"):
        p.add_argument(f"--{name}", type=int)
    for name in ("dry-run", "json", "ignore-prediction"):
        p.add_argument(f"--{name}", action="store_true")
    a = p.parse_args(own)
    req = LaunchRequest(target=a.target, model=a.model, cluster=a.cluster, steps=a.steps, data=a.data, out=a.out,
                        nnodes=a.nnodes, node_rank=a.node_rank or 0, nproc_per_node=a.nproc_per_node,
                        rdzv_endpoint=a.rdzv_endpoint, rdzv_id=a.rdzv_id, join_timeout_s=a.join_timeout_s,
                        max_restarts=a.max_restarts, checkpoint_every=a.checkpoint_every, train_args=extra,
                        ignore_prediction=a.ignore_prediction)
    return req, a


def main(argv: list[str] | None = None) -> int:
    req, a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run_launch(req, dry_run=a.dry_run, slurm=a.slurm, as_json=a.json)
    except (SpecError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

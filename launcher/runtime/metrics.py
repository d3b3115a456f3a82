"""Per-step measurements, the run summary, and costmodel's prediction for the same plan beside them."""
from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from costmodel import GiB, ClusterSpec, ModelSpec, Plan, SpecError, load_cluster, load_profile, mfu
from costmodel.hardware import profile_name_for_gpu


class StepTimer:
    """Wall time of one step; on GPU the device is synchronised at both ends so queued kernels count."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._t0 = 0.0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - self._t0


def gpu_profile_name(device: torch.device) -> str | None:
    """The shipped profile of the GPU in use (costmodel.hardware.profile_name_for_gpu); None on CPU."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return profile_name_for_gpu(props.name, props.total_memory)


def detect_cluster(device: torch.device, cluster: str | None = None, *, nodes: int | None = None,
                   gpus_per_node: int | None = None) -> ClusterSpec | None:
    """``cluster`` if given, else the cluster these GPUs form: ``nodes`` × ``gpus_per_node`` (default: from
    torchrun's environment) of the GPU's shipped profile, named ``detected-NxGxGPU`` (costmodel.runs reads it
    back); None on a machine without a known GPU."""
    if cluster:
        return load_cluster(cluster)
    gpu = gpu_profile_name(device)
    if gpu is None:
        return None
    if nodes is None or gpus_per_node is None:
        world = dist.get_world_size() if dist.is_initialized() else 1
        gpus_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        nodes = max(1, world // gpus_per_node)
    return ClusterSpec(nodes=nodes, gpus_per_node=gpus_per_node, gpu=gpu,
                       name=f"detected-{nodes}x{gpus_per_node}x{gpu}")


def peak_tflops(cluster: ClusterSpec | None) -> float | None:
    """The dense bf16 peak MFU is reported against (the cluster's profile), None without a GPU profile."""
    if cluster is None:
        return None
    return load_profile(cluster.gpu).bf16_tflops


def step_record(*, step: int, time_s: float, loss: float, grad_norm: float, lr: float, model: ModelSpec,
                plan: Plan, peak_tflops_: float | None, peak_alloc: float | None, peak_reserved: float | None,
                fp8: dict | None = None) -> dict:
    """One metrics.jsonl line; memory is already the max over ranks; ``fp8`` adds the float8 schedule's fields
    (Fp8Schedule.metrics: the window, and on probe steps the sensitivities)."""
    world = plan.world_size
    tps = plan.tokens_per_step / time_s / world
    rec = {"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr, "step_time_s": time_s,
           "tokens_per_s_per_gpu": tps, "mfu": mfu(model, plan.seq_len, tps, peak_tflops_) if peak_tflops_ else None, "peak_memory_bytes": peak_alloc,
           "peak_reserved_bytes": peak_reserved}
    if fp8 is not None:
        rec.update(fp8)
    return rec


def max_memory_over_ranks(device: torch.device) -> tuple[float | None, float | None]:
    """(peak allocated, peak reserved) bytes of this step, max over ranks; (None, None) off GPU."""
    if device.type != "cuda":
        return None, None
    t = torch.tensor([torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)],
                     dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0]), float(t[1])


def _median(records: list[dict], key: str) -> float | None:
    vals = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def predict_for(model: ModelSpec, cluster: ClusterSpec | None, plan: Plan) -> tuple[dict | None, str | None]:
    """(prediction dict, None) or (None, why there is none). costmodel.predict is imported lazily: it may not
    exist yet, and the trainer must not fail for want of a prediction."""
    if cluster is None:
        return None, "no GPU profile for this device (CPU run?); pass --cluster to predict anyway"
    try:
        import costmodel
        prediction = costmodel.predict(model, cluster, plan)
        return prediction.to_dict(), None
    except (AttributeError, ImportError) as e:
        return None, f"costmodel.predict unavailable: {type(e).__name__}: {e}"
    except SpecError as e:
        return None, f"costmodel.predict refused the plan: {e}"
    except Exception as e:  # a bug in the cost model must not lose the measurements
        return None, f"costmodel.predict failed: {type(e).__name__}: {e}"


def summarize(records: list[dict], *, timing_warmup_steps: int, model: ModelSpec, plan: Plan,
              cluster: ClusterSpec | None, extra: dict) -> dict:
    """Medians over post-warm-up steps (all steps if there are no others), max memory, the last loss, and the
    prediction for the same plan with the error in % (100 · (predicted - measured) / measured)."""
    timed = records[timing_warmup_steps:] or records
    out = {
        "steps_measured": len(timed),
        "step_time_s": _median(timed, "step_time_s"),
        "tokens_per_s_per_gpu": _median(timed, "tokens_per_s_per_gpu"),
        "mfu": _median(timed, "mfu"),
        "peak_memory_bytes": max((r["peak_memory_bytes"] for r in records if r.get("peak_memory_bytes")),
                                 default=None),
        "peak_reserved_bytes": max((r["peak_reserved_bytes"] for r in records if r.get("peak_reserved_bytes")),
                                   default=None),
        "final_loss": records[-1]["loss"] if records else None,
        "plan": plan.to_dict(), "model": model.name, "world_size": plan.world_size,
        "cluster": cluster.name if cluster else None,
    }
    out.update(extra)
    predicted, why = predict_for(model, cluster, plan)
    if predicted is None:
        out["prediction_error"] = why
        return out
    out["predicted"] = predicted
    errors = {}
    for key in ("step_time_s", "peak_memory_bytes"):
        m, p = out.get(key), predicted.get(key)
        if m and p is not None:
            errors[key] = 100.0 * (p - m) / m
    out["error_pct"] = errors
    return out


# The per-step scalars written to TensorBoard, under their metrics.jsonl names.
TENSORBOARD_SCALARS = ("loss", "grad_norm", "lr", "step_time_s", "tokens_per_s_per_gpu", "mfu", "peak_memory_bytes")


class MetricsWriter:
    """Rank 0's record of a run (no-op elsewhere and without a run directory): metrics.jsonl, TensorBoard event
    files in RUN/tensorboard (when the optional ``tensorboard`` package is installed; a warning once if not),
    and summary.json. ``start(step)`` drops what a killed run wrote after the checkpoint it resumes from, so
    every step appears once."""

    def __init__(self, run_dir: str | os.PathLike | None, *, tensorboard: bool = True) -> None:
        active = run_dir is not None and (not dist.is_initialized() or dist.get_rank() == 0)
        self.dir = Path(run_dir) if active else None
        self.tensorboard = tensorboard
        self._tb = None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)

    def start(self, step: int) -> None:
        """Begin writing after ``step`` optimizer steps (0: a fresh run, else the resumed checkpoint's step)."""
        if not self.dir:
            return
        path = self.dir / "metrics.jsonl"
        if path.is_file():
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and _step_of(ln) <= step]
            path.write_text("".join(f"{ln}\n" for ln in kept))
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed: no TensorBoard events (pip install tensorboard); "
                              "metrics.jsonl has every step")
                return
            # purge_step: TensorBoard hides events a killed run wrote past the checkpoint
            self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=step + 1 if step else None)

    def step(self, record: dict) -> None:
        if not self.dir:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key in TENSORBOARD_SCALARS:
                if record.get(key) is not None:
                    self._tb.add_scalar(f"train/{key}", record[key], record["step"])
            self._tb.flush()

    def summary(self, summary: dict) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.dir:
            (self.dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write: dropped
        return 1 << 62


def step_line(record: dict, *, total_steps: int, predicted: dict | None) -> str:
    """The console line of one step (TorchTitan style): loss, throughput, MFU, memory, and the prediction."""
    parts = [f"step {record['step']:>{len(str(total_steps))}}/{total_steps}", f"loss {record['loss']:8.4f}",
             f"{record['tokens_per_s_per_gpu']:,.0f} tok/s/GPU"]
    if record.get("mfu") is not None:
        parts.append(f"MFU {record['mfu']:.1%}")
    if record.get("peak_memory_bytes"):
        parts.append(f"mem {record['peak_memory_bytes'] / GiB:.2f} GiB")
    step = f"{record['step_time_s']:.3f} s"
    if predicted and predicted.get("step_time_s"):
        p = predicted["step_time_s"]
        step += f" (predicted {p:.3f} s, {100 * (p - record['step_time_s']) / record['step_time_s']:+.0f} %)"
    parts.append(step)
    return "  ".join(parts)

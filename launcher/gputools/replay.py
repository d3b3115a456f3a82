"""One rank of a plan replayed alone: a fake process group, the trainer's own step for that rank, and a
pipeline rank's stages run in its schedule's order — what `loadmaster verify` (fake tensors) and `loadmaster
rehearse` (real tensors on the local GPU) share.

PyTorch's "fake" process-group backend turns every collective into a no-op of the right shape, so FSDP2 and
DTensor tensor parallelism run one rank of any mesh in one process (TorchTitan's ``comm.mode = "fake_backend"``
dry runs work the same way). ``torch.distributed.pipelining`` does not run under it (its stages exchange shapes
first), so a pipeline rank runs its stage modules itself: the schedule's order of forwards and backwards, the
receive buffers ``PipelineStage`` allocates per micro-batch, the outputs it keeps until their backward, and the
gradient reduction it triggers after the last backward; sends and receives are no-ops.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from costmodel import Plan


class NoTracker:
    """Stands in for FSDPMemTracker where nothing is traced (a rehearsal measures the device itself)."""

    def reset_mod_stats(self) -> None:
        pass

    def track_inputs(self, inputs: Any) -> None:
        pass


@contextlib.contextmanager
def fake_process_group(rank: int, world_size: int):
    """A process group whose collectives do nothing (torch's "fake" backend), torn down on exit."""
    import torch.testing._internal.distributed.fake_pg  # noqa: F401  registers the "fake" backend
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from launcher.runtime.parallel.mesh import clear_mesh_cache
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        clear_mesh_cache()
        dist.destroy_process_group()


def forget_dtensor_caches() -> None:
    """Drop DTensor's sharding caches a parent may have filled: their keys compare meshes by layout, so an
    entry from another process group's mesh of the same shape would be reused with that group's names."""
    from torch.distributed.tensor import DTensor
    prop = DTensor._op_dispatcher.sharding_propagator
    for name in ("propagate_op_sharding", "_propagate_tensor_meta_cached"):
        clear = getattr(getattr(prop, name, None), "cache_clear", None)
        if clear is not None:
            clear()


def run_isolated(fn: Callable, calls: list[tuple], *, start_method: str, width: int) -> list:
    """``fn(*args)`` for every ``args`` of ``calls``, each in a child process of its own (``width`` at a time),
    results in order. A child owns its fake process group, meshes and DTensor caches. A failure in a child is
    re-raised here as ValueError (a user error: SpecError/ValueError) or RuntimeError, with its message."""
    import multiprocessing as mp
    if start_method not in mp.get_all_start_methods():
        return [fn(*args) for args in calls]
    ctx = mp.get_context(start_method)
    results: list = [None] * len(calls)
    for start in range(0, len(calls), width):
        batch = []
        try:
            for i in range(start, min(start + width, len(calls))):
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(send, fn, calls[i]), daemon=True)
                proc.start()
                send.close()
                batch.append((i, proc, recv))
            for i, proc, recv in batch:
                try:
                    status, payload = recv.recv()
                except EOFError:
                    status, payload = "error", ("RuntimeError", "the process died without a result (out of "
                                                                "host memory?)")
                if status == "error":
                    kind, message = payload
                    raise (ValueError if kind in ("ValueError", "SpecError", "OutOfMemoryError") else RuntimeError)(
                        f"{kind}: {message}")
                results[i] = payload
        finally:
            for _, proc, _ in batch:  # after a failure the others are not waited for
                if proc.is_alive():
                    proc.terminate()
                proc.join()
    return results


def _child(conn, fn: Callable, args: tuple) -> None:
    try:
        forget_dtensor_caches()
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # report every failure to the parent instead of a silent exit
        conn.send(("error", (type(e).__name__, " ".join(str(e).split())[:2000])))
    finally:
        conn.close()
        os._exit(0)  # skip atexit handlers inherited from the parent (pytest, torch)


def loss_context(plan: Plan):
    """The trainer's: vocabulary-sharded logits need torch's loss_parallel context."""
    if plan.tp > 1 and plan.vocab_parallel:
        from torch.distributed.tensor.parallel import loss_parallel
        return loss_parallel()
    return contextlib.nullcontext()


def replay_step(part, plan: Plan, tokens: torch.Tensor, labels: torch.Tensor, tracker=None, loss_fn=None) -> None:
    """Forward and backward of every micro-batch as launcher.runtime.trainer.forward_backward runs them;
    ``loss_fn(model, tokens, labels)`` is the trainer's loss (launcher.runtime.kernels.build_loss; default the
    eager cross-entropy on the model's logits)."""
    from launcher.runtime.trainer import cross_entropy_fp32
    tracker = tracker or NoTracker()
    loss_fn = loss_fn or (lambda model, x, y: cross_entropy_fp32(model(x), y))
    M, b = plan.num_microbatches, plan.micro_batch_size
    for m in range(M):
        tracker.reset_mod_stats()  # the memory tracker refuses a second root forward otherwise
        part.set_requires_gradient_sync(m == M - 1 or plan.grad_reduce == "every")
        rows = slice(m * b, (m + 1) * b)
        with loss_context(plan):
            loss = loss_fn(part, tokens[rows], labels[rows])
            (loss / M).backward()


def schedule_order(schedule: str, pp: int, rank: int, num_microbatches: int,
                   virtual_stages: int = 1) -> list[tuple[str, int, int]]:
    """("F" | "B", chunk, micro-batch) in the order pipeline ``rank`` runs them, chunk c being its stage
    ``rank + c·pp``. Schedule1F1B: ``pp - rank`` warm-up forwards, then a backward and a forward in turn, then
    the remaining backwards; GPipe: every forward, then every backward; Interleaved1F1B (Megatron's order, as
    torch.distributed.pipelining runs it): ``(v - 1)·pp + 2(pp - rank - 1)`` warm-up chunk-forwards taking
    micro-batches in groups of pp per chunk, then one-forward-one-backward, backwards walking the chunks down."""
    M, v = num_microbatches, virtual_stages
    if schedule == "GPipe":
        return [("F", 0, i) for i in range(M)] + [("B", 0, i) for i in range(M)]
    if schedule == "1F1B":
        warm = min(M, pp - rank)
        order = [("F", 0, i) for i in range(warm)]
        f = warm
        for b in range(M):
            order.append(("B", 0, b))
            if f < M:
                order.append(("F", 0, f))
                f += 1
        return order
    if schedule != "Interleaved1F1B":
        raise ValueError(f"pp_schedule {schedule!r} cannot be replayed; use 1F1B, GPipe or Interleaved1F1B")
    total = M * v

    def fwd(k):
        return "F", (k // pp) % v, (k // (pp * v)) * pp + k % pp

    def bwd(k):
        return "B", v - 1 - (k // pp) % v, (k // (pp * v)) * pp + k % pp
    warm = min(total, (v - 1) * pp + 2 * (pp - rank - 1))
    order = [fwd(k) for k in range(warm)]
    for k in range(total - warm):
        order += [fwd(warm + k), bwd(k)]
    order += [bwd(k) for k in range(total - warm, total)]
    return order


def replay_pipeline_rank(parts: list[tuple[int, Any]], plan: Plan, rank: int, tokens: torch.Tensor,
                         labels: torch.Tensor, device: torch.device, act_dtype: torch.dtype,
                         tracker=None, logits_loss=None) -> None:
    """One step of one pipeline rank, its stage modules ``parts`` ([(stage, module)]) run in the schedule's
    order, holding what ``PipelineStage`` holds: one activation receive buffer (not the first stage) and one
    gradient receive buffer (not the last) per micro-batch, kept across steps; every stage's forward outputs
    until their backward; the input gradient of the last backward until its send completes."""
    from launcher.runtime.trainer import cross_entropy_fp32
    tracker = tracker or NoTracker()
    logits_loss = logits_loss or cross_entropy_fp32
    M, b = plan.num_microbatches, plan.micro_batch_size
    h = parts[0][1].spec.hidden_size
    s_local = plan.seq_len // plan.cp   # each context-parallel rank's share of the sequence ...
    s_local //= plan.tp if plan.tp > 1 and plan.sequence_parallel else 1   # ... sharded again over TP under SP
    shape = (b, s_local, h)   # what crosses stages
    last_stage = plan.num_stages - 1
    recv_act = {s: [torch.empty(shape, dtype=act_dtype, device=device).requires_grad_() for _ in range(M)]
                for s, _ in parts if s != 0}
    recv_grad = {s: [torch.empty(shape, dtype=act_dtype, device=device) for _ in range(M)]
                 for s, _ in parts if s != last_stage}
    tracker.track_inputs((recv_act, recv_grad))
    cache: dict[tuple[int, int], tuple] = {}
    sent_grad = None
    for _, part in parts:
        part.set_requires_gradient_sync(False)
        part.set_reshard_after_backward(False)
        part.set_is_last_backward(False)
    for op, chunk, m in schedule_order(plan.pp_schedule, plan.pp, rank, M, plan.virtual_stages):
        stage, part = parts[chunk]
        first, last = stage == 0, stage == last_stage
        if op == "F":
            tracker.reset_mod_stats()
            x = tokens[m * b:(m + 1) * b] if first else recv_act[stage][m]
            with loss_context(plan):
                out = part(x)
                loss = logits_loss(out, labels[m * b:(m + 1) * b]) if last else None
            cache[(chunk, m)] = (x, out, loss)
            continue
        x, out, loss = cache.pop((chunk, m))
        with loss_context(plan):
            if last:
                loss.backward()
            else:
                torch.autograd.backward(out, grad_tensors=recv_grad[stage][m])
        del out, loss
        if not first:
            sent_grad, x.grad = x.grad, None
    del sent_grad
    for _, part in parts:
        reduce_after_pipeline(part)


def reduce_after_pipeline(part) -> None:
    """The gradient reduction ``PipelineStage.perform_reduce_grad`` runs once after the last backward: sync on,
    then FSDP2's post-backward of every parameter group and its final callback."""
    from torch.distributed.fsdp import fully_shard
    part.set_is_last_backward(True)
    part.set_reshard_after_backward(True)
    part.set_requires_gradient_sync(True)
    state = fully_shard.state(part)
    for s in state._state_ctx.all_states:
        groups = getattr(s, "_fsdp_param_groups", None)
        if groups is None:  # torch < 2.10 holds one group per state
            groups = [s._fsdp_param_group] if s._fsdp_param_group is not None else []
        for group in groups:
            group.post_backward()
    state._root_post_backward_final_callback()

"""A plain FSDP2 training step, written without loadmaster's launcher: the "no slowdown from our wrappers"
reference (benchmarks/trainer_gpu.py sets its throughput beside launcher.runtime.bench's on the same plan).

    torchrun --standalone --nproc-per-node G benchmarks/plain_fsdp2.py --plans PLANS.yaml --name NAME
        [--steps 6] [--warmup 2] [--out plain.jsonl]

Reads one {name, model, plan} entry of a launcher.runtime.bench plan file and runs it the way a short PyTorch script
would: its own Llama-style model (RMSNorm, rotate-half RoPE, SDPA with enable_gqa, SwiGLU or GeLU MLP,
optional tied embeddings), ``fully_shard`` per block and on the root with bf16 parameters and fp32
reduction, ``checkpoint_wrapper`` for full checkpointing, ``block.compile()`` per block, fused AdamW,
gradient clipping, gradient accumulation with sync on the last micro-batch, fp32 cross-entropy. Only
dp-only plans (tp = pp = 1) with recompute none/full and no offload or float8 are accepted. Imports torch
and pyyaml only. Appends one JSON line (median step time after the warm-up steps, tokens/s/GPU, peak
allocated memory max over ranks) to ``--out`` on rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "models"
UNSUPPORTED = {"offload_activation_layers": 0, "offload_state_layers": 0, "fp8_layers": 0, "tp": 1, "pp": 1}


def load_model_config(ref: str) -> dict:
    path = Path(ref) if Path(ref).exists() else RECIPES / f"{ref}.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    cfg.setdefault("rope_theta", 10000.0)
    cfg.setdefault("rms_norm_eps", 1e-5)
    return cfg


class Block(nn.Module):
    """Pre-norm decoder block with separate q/k/v/o and w1/w2/w3 projections (TorchTitan's layout)."""

    def __init__(self, c: dict) -> None:
        super().__init__()
        h, d, ff = c["hidden_size"], c["head_dim"], c["intermediate_size"]
        self.nq, self.nkv, self.d = c["num_attention_heads"], c["num_key_value_heads"], d
        self.norm1, self.norm2 = nn.RMSNorm(h, eps=c["rms_norm_eps"]), nn.RMSNorm(h, eps=c["rms_norm_eps"])
        self.wq, self.wo = nn.Linear(h, self.nq * d, bias=False), nn.Linear(self.nq * d, h, bias=False)
        self.wk, self.wv = nn.Linear(h, self.nkv * d, bias=False), nn.Linear(h, self.nkv * d, bias=False)
        self.gated = c.get("hidden_act", "silu") != "gelu"
        self.w1, self.w2 = nn.Linear(h, ff, bias=False), nn.Linear(ff, h, bias=False)
        self.w3 = nn.Linear(h, ff, bias=False) if self.gated else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        y = self.norm1(x)
        q, k, v = (w(y).view(b, s, -1, self.d).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.nkv != self.nq)
        x = x + self.wo(a.transpose(1, 2).reshape(b, s, -1))
        y = self.norm2(x)
        u = F.silu(self.w1(y)) * self.w3(y) if self.gated else F.gelu(self.w1(y))
        return x + self.w2(u)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Model(nn.Module):
    def __init__(self, c: dict, seq: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = nn.RMSNorm(c["hidden_size"], eps=c["rms_norm_eps"])
        self.head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        if c.get("tie_word_embeddings"):
            self.head.weight = self.embed.weight
        self.seq, self.head_dim, self.theta = seq, c["head_dim"], c["rope_theta"]

    def rope_tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        inv = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim)
        ang = torch.outer(torch.arange(self.seq, device=device).float(), inv).repeat(1, 2)
        return ang.cos().bfloat16(), ang.sin().bfloat16()

    def forward(self, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.head(self.norm(x))


def read_entry(plans: str, name: str) -> dict:
    entries = yaml.safe_load(Path(plans).read_text())
    entries = entries.get("plans", entries) if isinstance(entries, dict) else entries
    for e in entries:
        if e["name"] == name:
            return e
    raise SystemExit(f"error: {plans} has no entry named {name!r}")


def check_plan(plan: dict, world: int) -> None:
    for key, allowed in UNSUPPORTED.items():
        if plan.get(key, allowed) != allowed:
            raise SystemExit(f"error: plain_fsdp2 runs dp-only plans without offload or float8; {key} is "
                             f"{plan[key]}")
    if plan.get("recompute", "none") not in ("none", "full") or plan.get("recompute_layers") is not None:
        raise SystemExit("error: plain_fsdp2 runs recompute none or full (all blocks) only")
    if plan["dp"] != world:
        raise SystemExit(f"error: plan dp {plan['dp']} but {world} processes; launch dp processes")


def build(c: dict, plan: dict, device: torch.device, bf16: bool) -> Model:
    with torch.device("meta"):
        model = Model(c, plan["seq_len"])
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else torch.float32, reduce_dtype=torch.float32)
    reshard = plan["zero"] == 3
    for i, blk in enumerate(model.blocks):
        if plan.get("recompute", "none") == "full":
            blk = checkpoint_wrapper(blk, preserve_rng_state=False)
        if plan.get("compile"):
            blk.compile()
        model.blocks[i] = blk
        fully_shard(blk, reshard_after_forward=reshard and i < len(model.blocks) - 1, mp_policy=mp)
    fully_shard(model, reshard_after_forward=reshard, mp_policy=mp)
    model.to_empty(device=device)
    if c.get("tie_word_embeddings"):
        model.head.weight = model.embed.weight  # to_empty gave the two modules separate tensors
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                nn.init.normal_(p, std=0.02)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", help="JSONL to append the result to (rank 0)")
    args = ap.parse_args(argv)
    entry = read_entry(args.plans, args.name)
    plan, c = entry["plan"], load_model_config(str(entry["model"]))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    else:
        dist.init_process_group("gloo" if not cuda else "nccl", store=dist.HashStore(), rank=0, world_size=1)
    world, rank = dist.get_world_size(), dist.get_rank()
    check_plan(plan, world)
    torch.manual_seed(0)
    model = build(c, plan, device, bf16=cuda)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            **({"fused": True} if cuda else {"foreach": True}))
    cos, sin = model.rope_tables(device)
    if not cuda:
        cos, sin = cos.float(), sin.float()
    mbs, n_mb = plan["micro_batch_size"], plan["global_batch_size"] // (plan["micro_batch_size"] * world)
    times, peaks, losses = [], [], []
    for step in range(args.steps):
        tokens = torch.randint(0, c["vocab_size"], (n_mb, mbs, plan["seq_len"] + 1), device=device)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for m in range(n_mb):
            model.set_requires_gradient_sync(m == n_mb - 1)
            logits = model(tokens[m, :, :-1], cos, sin)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[m, :, 1:].flatten())
            del logits
            (loss / n_mb).backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        peak = torch.tensor([float(torch.cuda.max_memory_allocated(device)) if cuda else 0.0], device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        peaks.append(float(peak))
        losses.append(float(total) / n_mb)
    timed = times[args.warmup:] or times
    step_s = statistics.median(timed)
    line = {"name": args.name, "impl": "plain_fsdp2", "model": str(entry["model"]), "plan": plan,
            "world_size": world, "step_time_s": step_s,
            "tokens_per_s_per_gpu": plan["global_batch_size"] * plan["seq_len"] / step_s / world,
            "peak_memory_bytes": max(peaks) if cuda else None, "steps_measured": len(timed), "losses": losses,
            "step_times_s": times, "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__}
    if rank == 0:
        print(json.dumps({k: line[k] for k in ("name", "impl", "step_time_s", "tokens_per_s_per_gpu",
                                               "peak_memory_bytes")}), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

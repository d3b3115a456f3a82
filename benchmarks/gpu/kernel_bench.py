"""Each kernel choice's time and memory at model shapes, and the runtime constants they imply.

    python -m benchmarks.gpu.kernel_bench --out DIR [--budget-s 60] [--cpu-smoke]

Times forward + backward of RoPE (eager, eager_transposed, liger), RMSNorm and SwiGLU (eager, liger) at the
Llama-3.2-1B and an 8-block Llama-3-8B's shapes (2 × 4096 tokens), and of the loss (eager, compiled, liger_fused)
on the 1B's 128k vocabulary, with launcher.runtime.kernels' own functions. Memory: what autograd keeps from forward
to backward, and the peak above the inputs. It writes DIR/kernel_bench.json and prints, per choice, the value its
constant in profiles/runtime/loadmaster.yaml would take. The cost model prices a memory-bound op as bytes over
(HBM bandwidth × elementwise efficiency) of the H200 profile, backward twice forward; so a choice's constant is
the committed reference choice's (the one the committed runs ran, which the profile's efficiency was fitted with)
plus the measured difference converted at that rate — the fit stays valid and each new choice is measured
(the loss: against the eager loss's 42 B per logit, head GEMMs included in both).
Liger rows need liger-kernel (the wheel in .whl) and a CUDA GPU; they are reported as unavailable otherwise.
"""
from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

from benchmarks.gpu import kit

TOKENS = 2 * 4096
RATE_NOTE = "forward-equivalent bytes: (forward + backward time) × HBM × efficiency / 3 per element"


def _timed(fn, reps: int, sync) -> float:
    """Median seconds of fn() over ``reps`` runs after two warm-up runs."""
    for _ in range(2):
        fn()
    sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


class Bench:
    def __init__(self, device, dtype, reps: int, compile_backend: str) -> None:
        import torch
        self.torch, self.device, self.dtype, self.reps, self.backend = torch, device, dtype, reps, compile_backend
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def mem(self) -> int:
        return self.torch.cuda.memory_allocated() if self.cuda else 0

    def fwd_bwd(self, make_inputs, forward) -> dict:
        """Time and memory of forward + backward: inputs are fresh leaves each run; returns seconds, bytes kept by
        autograd beyond inputs and output (``saved``), and the peak above the inputs (``peak``)."""
        torch = self.torch

        def once():
            inputs = make_inputs()
            out = forward(*inputs)
            out.backward(torch.ones_like(out) if out.dim() else None)
        seconds = _timed(once, self.reps, self.sync)
        inputs = make_inputs()
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        base = self.mem()
        out = forward(*inputs)
        self.sync()
        held = self.mem() - base - out.numel() * out.element_size() if self.cuda else None
        out.backward(torch.ones_like(out) if out.dim() else None)
        self.sync()
        peak = (torch.cuda.max_memory_allocated() - base) if self.cuda else 0
        return {"seconds": seconds, "saved_bytes": held, "peak_bytes": peak}


def bench_rope(b: Bench, spec, impls) -> list[dict]:
    from launcher.runtime import kernels
    from launcher.runtime.model import rope_tables
    torch = b.torch
    dh, a, g = int(spec.head_dim), spec.num_attention_heads, spec.kv_heads
    s = 4096 if b.cuda else 16
    bsz = TOKENS // s if b.cuda else 2
    cos_full, sin_full = (t.to(b.device) for t in rope_tables(dh, s, spec.rope_theta))
    rows = []
    for impl in impls:
        def make():
            q = torch.randn(bsz, s, a, dh, device=b.device, dtype=b.dtype) * 1.0
            k = torch.randn(bsz, s, g, dh, device=b.device, dtype=b.dtype) * 1.0
            return q.requires_grad_(), k.requires_grad_()

        def forward(q, k):   # the tables are made once per model forward, so inside the timed region too
            cos, sin = kernels.rope_tables(impl, cos_full, sin_full, b.dtype)
            q2, k2 = kernels.apply_rope(impl, q * 1.0, k * 1.0, cos, sin)   # * 1.0: liger rotates in place
            return torch.cat([q2.flatten(), k2.flatten()]).float().sum()
        # the two copies (* 1.0), the cat and the sum are the same for every choice: measured alone and subtracted
        base = b.fwd_bwd(make, lambda q, k: torch.cat([(q * 1.0).flatten(), (k * 1.0).flatten()]).float().sum())
        got = b.fwd_bwd(make, forward)
        rows.append({"kernel": "rope_impl", "choice": impl, "model": spec.name,
                     "elements": bsz * s * (a + g) * dh, "seconds": got["seconds"] - base["seconds"]})
    return rows


def bench_norm(b: Bench, spec, impls) -> list[dict]:
    from launcher.runtime import kernels
    torch = b.torch
    T, h = (TOKENS, spec.hidden_size) if b.cuda else (32, spec.hidden_size)
    w = torch.ones(h, device=b.device, dtype=b.dtype, requires_grad=True)
    rows = []
    for impl in impls:
        def make():
            return (torch.randn(T, h, device=b.device, dtype=b.dtype).requires_grad_(),)
        got = b.fwd_bwd(make, lambda x: kernels.rms_norm(impl, x, w, 1e-5))
        rows.append({"kernel": "norm_impl", "choice": impl, "model": spec.name, "elements": T * h, **got})
    return rows


def bench_swiglu(b: Bench, spec, impls) -> list[dict]:
    from launcher.runtime import kernels
    torch = b.torch
    T, F = (TOKENS, spec.intermediate_size) if b.cuda else (32, spec.intermediate_size)
    rows = []
    for impl in impls:
        def make():
            pa = torch.randn(T, F, device=b.device, dtype=b.dtype, requires_grad=True)
            pb = torch.randn(T, F, device=b.device, dtype=b.dtype, requires_grad=True)
            return pa, pb
        # a and b as non-leaf projection outputs (* 1.0), as in the model; the copies are measured alone
        base = b.fwd_bwd(make, lambda pa, pb: (pa * 1.0) + (pb * 1.0))
        got = b.fwd_bwd(make, lambda pa, pb: kernels.swiglu(impl, pa * 1.0, pb * 1.0))
        rows.append({"kernel": "swiglu_impl", "choice": impl, "model": spec.name, "elements": T * F,
                     "seconds": got["seconds"] - base["seconds"],
                     # kept beyond the inputs and the output, in MLP-wide bf16 tensors: a, b (and SiLU's output)
                     "saved_tensors": None if got["saved_bytes"] is None else got["saved_bytes"] / (T * F * 2)})
    return rows


def bench_loss(b: Bench, spec, impls) -> list[dict]:
    from launcher.runtime import kernels
    torch = b.torch
    T, h, V = (TOKENS, spec.hidden_size, spec.vocab_size) if b.cuda else (64, spec.hidden_size, spec.vocab_size)
    labels = torch.randint(0, V, (1, T), device=b.device)
    W = (torch.randn(V, h, device=b.device, dtype=b.dtype) * h ** -0.5).requires_grad_()

    def make():
        return (torch.randn(1, T, h, device=b.device, dtype=b.dtype).requires_grad_(),)
    gemms = b.fwd_bwd(make, lambda x: (x @ W.T).float().sum())   # the head GEMM forward and its two backward
    rows = []
    for impl in impls:
        if impl == "liger_fused":
            forward = lambda x: kernels.fused_linear_cross_entropy(x, W, labels)  # noqa: E731
        else:
            on_logits = kernels.logits_loss(impl, backend=b.backend)
            forward = lambda x, f=on_logits: f(x @ W.T, labels)  # noqa: E731
        got = b.fwd_bwd(make, forward)
        W.grad = None
        rows.append({"kernel": "loss_impl", "choice": impl, "model": spec.name, "elements": T * V,
                     "tokens": T, "vocab": V, "hidden": h, "seconds_with_gemms": got["seconds"],
                     "seconds": got["seconds"] - gemms["seconds"],
                     "kept_bytes_per_logit": None if got["saved_bytes"] is None else got["saved_bytes"] / (T * V),
                     "peak_bytes_per_logit": got["peak_bytes"] / (T * V) if b.cuda else None})
    return rows


REFERENCE = {"rope_impl": ("eager_transposed", "rope_bytes_{}", 22.0),
             "norm_impl": ("eager", "norm_residual_bytes_{}", 20.0),
             "swiglu_impl": ("eager", "mlp_gate_bytes_{}", 6.0)}


def implied_constants(rows: list[dict]) -> list[dict]:
    """Per choice, the constant the measurement implies: the reference choice's committed value plus the measured
    difference in forward-equivalent bytes per element at the H200 profile's elementwise rate (norms: two per
    block, so twice the difference; the loss: bytes per logit directly, its GEMMs and — fused — its modelled
    accumulation taken out)."""
    from costmodel import load_cluster
    from costmodel.constants import runtime_constants
    from costmodel.hardware import profile_for
    from costmodel.kernels import loss_chunks
    prof = profile_for(load_cluster("1xh200"))
    rate = prof.hbm_gbps * 1e9 * prof.const("elementwise_efficiency")
    consts = runtime_constants()
    out = []
    for r in rows:
        if "seconds" not in r:
            continue
        per_elem = r["seconds"] * rate / r["elements"]
        if r["kernel"] == "loss_impl":   # bytes per logit, against the eager loss (GEMMs included in both)
            ref = next((x for x in rows if x["kernel"] == "loss_impl" and x["choice"] == "eager"), None)
            if ref is None:
                continue
            fused = r["choice"] == "liger_fused"
            acc = consts["flce_accumulate_bytes"].value * loss_chunks(r["tokens"], r["vocab"], r["hidden"]) \
                * r["vocab"] * r["hidden"] / r["elements"] if fused else 0.0
            delta = (r["seconds_with_gemms"] - ref["seconds_with_gemms"]) * rate / r["elements"]
            sfx = "" if r["choice"] == "eager" else f"_{r['choice']}"
            out.append(dict(r, constant=f"loss_traffic_bytes_per_logit{sfx}",
                            implied=consts["loss_traffic_bytes_per_logit"].value + delta - acc))
            continue
        ref_choice, template, ref_value = REFERENCE[r["kernel"]]
        ref = next((x for x in rows if x["kernel"] == r["kernel"] and x["choice"] == ref_choice
                    and x["model"] == r["model"] and "seconds" in x), None)
        if ref is None:
            continue
        delta = (r["seconds"] - ref["seconds"]) * rate / r["elements"] / 3
        scale = 2 if r["kernel"] == "norm_impl" else 1
        out.append(dict(r, constant=template.format(r["choice"]), implied=ref_value + scale * delta))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = kit.parser(__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.set_defaults(budget_s=60.0)
    args = ap.parse_args(argv)
    deadline = kit.Deadline(args.budget_s)
    kit.install_wheels()
    import json

    import torch
    from costmodel import load_model
    from launcher.runtime.kernels import liger_problem
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    b = Bench(device, dtype, args.reps if cuda else 2, "inductor" if cuda else "aot_eager")
    liger = liger_problem(device.type)
    models = [load_model(kit.TINY)] if not cuda else \
        [load_model(kit.ROOT / "benchmarks/gpu/models/llama3.2-1b-untied.yaml"),
         load_model(kit.ROOT / "benchmarks/gpu/models/llama3-8b-8l.yaml")]
    plain = {"rope_impl": ["eager_transposed", "eager"], "norm_impl": ["eager"], "swiglu_impl": ["eager"],
             "loss_impl": ["eager", "compiled"]}
    rows: list[dict] = []
    jobs = [(bench_rope, "rope_impl", "liger"), (bench_norm, "norm_impl", "liger"),
            (bench_swiglu, "swiglu_impl", "liger")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the loss first: its compile takes the longest and its constants move predictions the most
        loss_model = models[0]
        rows += bench_loss(b, loss_model, plain["loss_impl"] + (["liger_fused"] if liger is None else []))
        for spec in models:
            for fn, key, liger_choice in jobs:
                if not deadline.allows(5):
                    rows.append({"kernel": key, "model": spec.name, "skipped": "budget"})
                    continue
                rows += fn(b, spec, plain[key] + ([liger_choice] if liger is None else []))
    if liger is not None:
        rows.append({"kernel": "liger", "skipped": liger})
    implied = implied_constants(rows) if cuda else []
    result = {"device": kit.device_name(), "versions": kit.versions(), "tokens": TOKENS, "rows": rows,
              "implied": implied, "note": RATE_NOTE}
    (out / "kernel_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    print(kit.table(rows, [("kernel", "kernel", ""), ("choice", "choice", ""), ("model", "model", ""),
                           ("s", "seconds", ".5f"), ("saved tensors", "saved_tensors", ".2f"),
                           ("kept B/logit", "kept_bytes_per_logit", ".2f"),
                           ("peak B/logit", "peak_bytes_per_logit", ".2f"), ("skipped", "skipped", "")]))
    if implied:
        print("\nimplied constants (profiles/runtime/loadmaster.yaml):")
        print(kit.table(implied, [("constant", "constant", ""), ("model", "model", ""), ("value", "implied", ".2f")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

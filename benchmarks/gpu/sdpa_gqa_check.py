"""Which SDPA backend runs grouped-query attention, and is ``enable_gqa=True`` as fast as repeating K/V?

    python benchmarks/gpu/sdpa_gqa_check.py [--json OUT.json]     # ~30 s on one H200; tiny shapes on CPU

launcher.runtime.model calls ``F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)`` with fewer
K/V heads than query heads. Not every backend takes ``enable_gqa``; where the preferred one (cuDNN on
H100/H200 with torch 2.11) does not, dispatch silently falls back to another. For the GQA shapes of
llama3.2-1b and llama3-8b this prints, for causal forward+backward in bf16: the backend the default dispatch
picks (read from the profiler's aten op names) and its time with ``enable_gqa=True``; the same after
``repeat_interleave`` of K and V to all heads (what a model without enable_gqa would do); and each backend
forced alone with ``enable_gqa=True`` (or why it refused).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# (model, query heads, kv heads, head dim); batch × seq fixed below
SHAPES = [("llama3.2-1b", 32, 8, 64), ("llama3-8b", 32, 8, 128), ("gpt3-1.3b", 16, 16, 128)]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
_OP_BACKEND = {"_scaled_dot_product_cudnn_attention": "cudnn", "_scaled_dot_product_flash_attention": "flash",
               "_scaled_dot_product_efficient_attention": "efficient", "_flash_attention_forward": "flash",
               "_efficient_attention_forward": "efficient", "_scaled_dot_product_attention_math": "math",
               "_scaled_dot_product_flash_attention_for_cpu": "flash-cpu"}


def make_inputs(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int, device, dtype):
    g = torch.Generator(device=device).manual_seed(0)
    def t(h):  # noqa: E306
        return torch.randn(batch, h, seq, head_dim, device=device, dtype=dtype, generator=g).requires_grad_()
    return t(heads), t(kv_heads), t(kv_heads)


def fwd_bwd(q, k, v, *, gqa: bool) -> None:
    if gqa:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        rep = q.shape[1] // k.shape[1]
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                             is_causal=True)
    out.backward(torch.ones_like(out))


def time_ms(fn, device, repeats: int) -> float:
    """Median milliseconds of ``fn`` (after two warm-up calls), synchronised on CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def dispatched_backend(fn) -> str:
    """The SDPA backend(s) one call dispatches to, from the profiler's aten op names."""
    from torch.profiler import profile
    with profile() as prof:
        fn()
    found = {_OP_BACKEND[e.key.removeprefix("aten::")] for e in prof.key_averages()
             if e.key.removeprefix("aten::") in _OP_BACKEND}
    return "+".join(sorted(found)) or "unknown"


def check_shape(name, heads, kv_heads, head_dim, *, batch, seq, device, dtype, repeats) -> list[dict]:
    q, k, v = make_inputs(batch, seq, heads, kv_heads, head_dim, device, dtype)
    flops = 4 * batch * heads * seq * seq * head_dim / 2 * 3.5  # causal fwd (2 GEMMs) + bwd (5 GEMMs)
    rows = []
    for label, gqa in (("default, enable_gqa=True", True), ("default, repeat_interleave K/V", False)):
        fn = lambda: fwd_bwd(q, k, v, gqa=gqa)  # noqa: E731
        ms = time_ms(fn, device, repeats)
        rows.append({"shape": name, "variant": label, "backend": dispatched_backend(fn), "ms": ms,
                     "tflops": flops / ms / 1e9})
    for bname, backend in BACKENDS.items():
        if device.type != "cuda" and bname != "math":
            continue
        fn = lambda: fwd_bwd(q, k, v, gqa=True)  # noqa: E731
        try:
            with sdpa_kernel([backend]):
                ms = time_ms(fn, device, max(1, repeats // 2) if bname == "math" else repeats)
            rows.append({"shape": name, "variant": f"forced {bname}, enable_gqa=True", "backend": bname, "ms": ms,
                         "tflops": flops / ms / 1e9})
        except RuntimeError as e:
            rows.append({"shape": name, "variant": f"forced {bname}, enable_gqa=True", "backend": bname,
                         "ms": None, "tflops": None, "refused": " ".join(str(e).split())[:160]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    batch, seq, repeats = (2, 4096, 10) if cuda else (1, 128, 2)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'CPU (tiny shapes)'}; "
          f"causal fwd+bwd, batch {batch} x seq {seq}, {dtype}")
    rows = []
    for name, h, kv, d in SHAPES:
        rows += check_shape(name, h, kv, d, batch=batch, seq=seq, device=device, dtype=dtype, repeats=repeats)
    print(f"| {'shape':12} | {'variant':34} | {'backend':10} | {'ms':>7} | {'TFLOP/s':>7} |")
    print(f"|{'-' * 14}|{'-' * 36}|{'-' * 12}|{'-' * 9}|{'-' * 9}|")
    for r in rows:
        ms = f"{r['ms']:7.2f}" if r["ms"] is not None else "refused"
        tf = f"{r['tflops']:7.0f}" if r["tflops"] is not None else ""
        print(f"| {r['shape']:12} | {r['variant']:34} | {r['backend']:10} | {ms:>7} | {tf:>7} |"
              + (f" {r['refused']}" if r.get("refused") else ""))
    for name, *_ in SHAPES:
        by = {r["variant"]: r for r in rows if r["shape"] == name}
        a, b = by["default, enable_gqa=True"], by["default, repeat_interleave K/V"]
        print(f"{name}: enable_gqa runs {a['backend']} in {a['ms']:.2f} ms; repeat_interleave runs {b['backend']} "
              f"in {b['ms']:.2f} ms ({b['ms'] / a['ms']:.2f}x the enable_gqa time)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": str(device), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Model keys that change the math (Qwen2's q/k/v biases, Llama-3.1's RoPE scaling) as the trainer builds them;
their distributed runs are checked against the single-process reference in test_trainer_parallel.py."""
from __future__ import annotations

import math

import pytest
import torch
from trainer_harness import TINY, config, plan_of

from costmodel import ModelSpec, SpecError
from launcher.runtime.config import validate
from launcher.runtime.model import Transformer, llama3_scaled

LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}


def test_llama3_scaling_keeps_short_wavelengths_and_divides_long_ones():
    inv = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    out = llama3_scaled(inv, **LLAMA31)
    wavelen = 2 * math.pi / inv
    short, long_ = wavelen < 8192 / 4, wavelen > 8192 / 1
    assert short.any() and long_.any() and (~short & ~long_).any()
    assert torch.equal(out[short], inv[short])
    assert torch.allclose(out[long_], inv[long_] / 8)
    middle = ~short & ~long_  # interpolated: between the scaled and the unscaled frequency
    assert ((out[middle] < inv[middle]) & (out[middle] > inv[middle] / 8)).all()


def test_qkv_bias_adds_zero_initialised_biases_to_q_k_v_only():
    spec = ModelSpec(**{**TINY.__dict__, "qkv_bias": True})
    with torch.device("meta"):
        model = Transformer(spec, 32)
    model.to_empty(device="cpu")
    model.init_weights(seed=0)
    attn = model.layers["0"].attention
    assert all(torch.count_nonzero(lin.bias) == 0 for lin in (attn.wq, attn.wk, attn.wv))
    assert attn.wo.bias is None and model.layers["0"].feed_forward.w1.bias is None
    n = sum(p.numel() for name, p in model.named_parameters() if name.startswith("layers.0."))
    assert n == spec.params_per_block()  # the cost model counts what the trainer builds


def test_the_trainer_refuses_rope_scaling_it_does_not_implement():
    spec = ModelSpec(**{**TINY.__dict__, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(SpecError, match="rope_scaling: rope_type yarn is not implemented by the trainer"):
        validate(config(plan_of(), model=spec), 1)

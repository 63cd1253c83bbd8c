"""aoti.fp8_attention: the FP8 flash-attention kernel (run by Triton's CPU interpreter here) against
softmax attention in float64, and the "fp8" attention backend's routing of SDPA calls. On a GPU the
kernel is compiled into AOTI packages (benchmarks/gpu/flux_step.py, variant fp8_attention_graphs)."""

from __future__ import annotations

import textwrap

import torch

from aoti import attention
from tests.interpreted import needs_triton, run_interpreted

INTERPRETED = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from aoti import attention, fp8_attention as fa

    torch.manual_seed(0)
    SMALL = fa.AttentionConfig(16, 16, 4, 1)

    def reference(q, k, v):
        return torch.softmax((q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5, -1) @ v.double()

    def error(out, ref):
        return float((out.double() - ref).norm() / ref.norm())

    def dequantized(x, per="head"):
        if per == "token":
            values, scale = fa.quantize_tokens(x)
            return values.float() * scale.reshape(*x.shape[:3], 1)
        if per == "block":  # v: per block of the config's keys, written as (B, H, D, S)
            values, scale = fa.quantize_value_blocks(x, SMALL.block_n)
            block_scale = scale.reshape(*x.shape[:2], 1, -1).repeat_interleave(SMALL.block_n, -1)[..., :x.shape[2]]
            return (values.float() * block_scale).transpose(-1, -2)
        values, scale = fa.quantize_heads(x)
        return values.float() * scale.reshape(*x.shape[:2], 1, 1)

    # (batch, heads, queries, keys, head dim): lengths that fill no tile, several tiles, one tile.
    for b, h, sq, skv, d in ((1, 2, 40, 70, 32), (2, 1, 16, 16, 16), (1, 1, 33, 130, 64)):
        q, k, v = torch.randn(b, h, sq, d), torch.randn(b, h, skv, d), torch.randn(b, h, skv, d)
        # the kernel's arithmetic (online softmax over key tiles, masked tails) in float32
        assert error(fa.launch(q, k, v, fp8=False, config=SMALL), reference(q, k, v)) < 1e-5
        # exponentials on the FMA units, all or every other one: the polynomial's 1.7e-3 relative error
        for on_fma in (1, 2):
            config = fa.AttentionConfig(16, 16, 4, 1, exp2_fma=on_fma)
            assert 1e-5 < error(fa.launch(3 * q, k, v, fp8=False, config=config), reference(3 * q, k, v)) < 2e-3
        # FP8: what the e4m3 operands and probabilities cost, against attention on the dequantized
        # operands and on the exact ones
        out = fa.launch(*(t.bfloat16() for t in (q, k, v)), config=SMALL)
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        assert error(out, reference(dequantized(q, "token"), dequantized(k), dequantized(v, "block"))) < 0.1
        assert error(out, reference(q, k, v)) < 0.12

    # v per block of keys in one pass: fp8_scaled's scales and values for each block (a block of zeros
    # included; the values before the e4m3 cast, which the interpreter rounds differently from the GPU),
    # and the kernel, whose accumulator changes units from block to block, against the dequantized
    # operands when the blocks' scales differ by up to 100x
    from aoti.quant import FP8_MAX, fp8_scaled
    v = torch.randn(2, 3, 37, 32, dtype=torch.bfloat16) * torch.logspace(-2, 0, 37).reshape(1, 1, 37, 1)
    v[0, 1, 16:32] = 0
    strided = v.transpose(-1, -2).contiguous().transpose(-1, -2)
    values, scale = fa.quantize_value_blocks(strided, 16, dtype=torch.float32)
    assert values.shape == (2, 3, 32, 37) and scale.shape == (2 * 3 * 3,)
    for block in range(3):
        part = v[:, :, 16 * block:16 * (block + 1)].float()
        want_scale = fp8_scaled(part, part.abs().amax((-1, -2), keepdim=True))[1]
        assert torch.equal(scale.reshape(2, 3, 3)[..., block], want_scale.reshape(2, 3))
        want = (part / want_scale).clamp(-FP8_MAX, FP8_MAX).transpose(-1, -2)
        assert torch.equal(values[..., 16 * block:16 * (block + 1)], want)
    assert fa.quantize_value_blocks(strided, 16)[0].dtype == torch.float8_e4m3fn
    q, k = torch.randn(2, 3, 20, 32, dtype=torch.bfloat16), torch.randn(2, 3, 37, 32, dtype=torch.bfloat16)
    out = fa.launch(q, k, v, config=SMALL)
    assert error(out, reference(dequantized(q, "token"), dequantized(k), dequantized(v, "block"))) < 0.1

    # the "fp8" backend: unmasked calls go to the op, the others to SDPA itself
    q, k, v = (torch.randn(1, 2, 24, 32, dtype=torch.bfloat16) for _ in range(3))
    calls = []
    original_op = fa.launch
    fa.launch = lambda *a, **kw: calls.append(1) or original_op(*a, **kw, config=SMALL)
    with attention.pinned("fp8"):
        routed = F.scaled_dot_product_attention(q, k, v)
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert len(calls) == 1, calls
    assert error(routed, reference(q, k, v)) < 0.12
    assert torch.equal(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert F.scaled_dot_product_attention is fa._original_sdpa  # restored on leaving
    print("ok")
""")


@needs_triton
def test_fp8_attention_kernel_and_backend_in_the_interpreter():
    assert run_interpreted(INTERPRETED).endswith("ok")


def test_fp8_attention_falls_back_visibly_on_the_cpu():
    decision = attention.decide("fp8", torch.device("cpu"))
    assert decision.applied == "auto" and "CUDA" in decision.reason

"""aoti.fp8_attention: the FP8 flash-attention kernel (run by Triton's CPU interpreter here) against
softmax attention in float64, and the "fp8" attention backend's routing of SDPA calls. On a GPU the
kernel is compiled into AOTI packages ."""

from __future__ import annotations

import textwrap

import torch

from aoti import attention
from tests.interpreted import needs_triton, run_interpreted

INTERPRETED = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from aoti import attention
    from aoti.kernels import fp8_attention as fa

    torch.manual_seed(0)
    SMALL = fa.AttentionConfig(16, 16, 4, 1)

    def reference(q, k, v):
        return torch.softmax((q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5, -1) @ v.double()

    def error(out, ref):
        return float((out.double() - ref).norm() / ref.norm())

    def dequantized(x, per_token=False):
        if per_token:
            values, scale = fa.quantize_tokens(x)
            return values.float() * scale.reshape(*x.shape[:3], 1)
        values, scale = fa.quantize_heads(x)
        return values.float() * scale.reshape(*x.shape[:2], 1, 1)

    # (batch, heads, queries, keys, head dim): lengths that fill no tile, several tiles, one tile.
    for b, h, sq, skv, d in ((1, 2, 40, 70, 32), (2, 1, 16, 16, 32), (1, 1, 33, 130, 64)):
        q, k, v = torch.randn(b, h, sq, d), torch.randn(b, h, skv, d), torch.randn(b, h, skv, d)
        # the kernel's arithmetic (online softmax over key tiles, masked tails) in float32
        assert error(fa.launch(q, k, v, fp8=False, config=SMALL), reference(q, k, v)) < 1e-5
        # FP8: what the e4m3 operands and probabilities cost, against attention on the dequantized
        # operands and on the exact ones
        out = fa.launch(*(t.bfloat16() for t in (q, k, v)), config=SMALL)
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        assert error(out, reference(dequantized(q, per_token=True), dequantized(k), dequantized(v))) < 0.1
        assert error(out, reference(q, k, v)) < 0.12

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

"""aoti.kernels.decode_attention: the split-KV decode attention kernels (run by Triton's CPU interpreter here)
against softmax attention computed in float64, and through a grouped-query model's decode step. On a
GPU the kernels are compiled into AOTI packages ."""

from __future__ import annotations

import textwrap

import torch

from aoti.kernels import decode_attention
from tests.interpreted import needs_triton, run_interpreted

INTERPRETED = textwrap.dedent("""
    import torch
    from aoti.kernels import decode_attention as da

    torch.manual_seed(0)

    def reference(q, k, v, mask, scale):
        scores = (q.double() @ k.double().transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
        return torch.softmax(scores, -1) @ v.double()

    def close(out, ref, tol):
        err = float((out.double() - ref).norm() / ref.norm())
        assert err < tol, err

    # (batch, kv heads, group, dim, cache length): groups that fill no tile, lengths that fill no chunk,
    # one chunk and many.
    for b, h, g, d, length in ((1, 2, 7, 32, 100), (2, 1, 3, 16, 64), (1, 4, 16, 64, 300), (1, 1, 1, 16, 5)):
        q, k, v = torch.randn(b, h, g, d), torch.randn(b, h, length, d), torch.randn(b, h, length, d)
        valid = torch.rand(b, 1, 1, length) < 0.7
        valid[..., 0] = True  # a decode step always sees at least its own key
        scale = d ** -0.5
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            args = [t.to(dtype) for t in (q, k, v)]
            assert da.supports(*args, valid)
            close(da.launch(*args, valid), reference(*args, valid, scale), tol)
            close(da.launch(*args, None, 0.3), reference(*args, None, 0.3), tol)
            additive = torch.where(valid, 0.0, torch.finfo(dtype).min).to(dtype)
            close(da.launch(*args, additive), reference(*args, additive, scale), tol)
            shared = valid[:1]  # one mask row for the whole batch
            close(da.launch(*args, shared), reference(*args, shared, scale), tol)
            assert da.launch(*args, valid).dtype == dtype

    # The op (what a traced graph records) is the same computation.
    q, k, v = torch.randn(1, 2, 7, 32), torch.randn(1, 2, 50, 32), torch.randn(1, 2, 50, 32)
    torch.testing.assert_close(da.decode_attention(q, k, v), da.launch(q, k, v))
    print("ok")
""")

# A grouped-query model's decode steps with the kernel flagged give the logits of SDPA attention.
MODEL = textwrap.dedent("""
    import torch
    from aoti.integrations.transformers import use_decode_attention
    from aoti.integrations.transformers import use_gqa_decode_attention
    from tests import tiny

    def logits(kernel):
        model = tiny.qwen2()
        use_gqa_decode_attention(model)
        assert use_decode_attention(model, kernel) == (2 if kernel else 0)
        decoder = tiny.static_cache_decoder(model, max_cache_len=80)
        ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            outs = [decoder(input_ids=ids[:, :9], cache_position=torch.arange(9))]
            outs += [decoder(input_ids=ids[:, i : i + 1], cache_position=torch.tensor([i])) for i in (9, 10, 11)]
        return torch.stack([o[0, -1] for o in outs])

    torch.testing.assert_close(logits(True), logits(False), rtol=1e-4, atol=1e-4)
    print("ok")
""")


@needs_triton
def test_kernels_match_softmax_attention_in_the_interpreter():
    assert run_interpreted(INTERPRETED).endswith("ok")


@needs_triton
def test_flagged_decode_steps_give_the_logits_of_sdpa_attention():
    assert run_interpreted(MODEL).endswith("ok")


def test_unsupported_inputs_are_left_to_sdpa():
    q, k, v = torch.randn(1, 2, 7, 32), torch.randn(1, 2, 40, 32), torch.randn(1, 2, 40, 32)
    assert not decode_attention.supports(q, k, v, None)  # float32 on the CPU, no interpreter
    half = [t.half() for t in (q, k, v)]
    assert not decode_attention.supports(*half, torch.ones(1, 2, 1, 40, dtype=torch.bool))  # a mask per head
    odd = torch.randn(1, 2, 7, 24).half()
    assert not decode_attention.supports(odd, odd, odd, None)  # head size not a power of two

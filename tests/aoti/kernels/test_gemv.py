"""aoti.kernels.gemv: the one-row Triton kernel (run by Triton's CPU interpreter here), the op, and the
routing of linear layers. On a GPU the kernel is compiled into AOTI packages
; here the interpreter checks its arithmetic."""

from __future__ import annotations

import itertools
import textwrap

import pytest
import torch

from aoti.kernels import gemv
from tests.interpreted import needs_triton, run_interpreted

# Run in a child: TRITON_INTERPRET is read when a kernel is defined, at import.
INTERPRETED = textwrap.dedent("""
    import torch
    from aoti.kernels import gemv
    from aoti.kernels.fp8_rows import rowwise_fp8
    from aoti.transforms.decode import use_gemv
    from aoti.transforms.quantize import RowwiseFloat8Linear

    assert gemv.INTERPRETING
    torch.manual_seed(0)

    def close(out, ref, tol):
        err = float((out.float() - ref).norm() / ref.norm())
        assert err < tol, err

    # Sizes that fill no tile evenly (masked rows and columns), one program per row and several.
    for n, k, config in ((70, 300, gemv.GemvConfig(4, 128, 4, 1)), (33, 1000, gemv.GemvConfig(1, 256, 4, 1)),
                         (40, 96, None)):
        w = torch.randn(n, k, dtype=torch.bfloat16)
        x = torch.randn(k, dtype=torch.bfloat16)
        bias = torch.randn(n, dtype=torch.bfloat16)
        ref = w.float() @ x.float()
        close(gemv.launch(x, w, config=config), ref, 1e-2)
        close(gemv.launch(x, w, bias=bias, config=config), ref + bias.float(), 1e-2)
        close(gemv.launch(x.half(), w.half(), config=config), ref, 2e-3)
        q, scale = rowwise_fp8(w)
        close(gemv.launch(x, q, scale.reshape(-1), bias, config=config),
              (q.float() @ x.float()) * scale.reshape(-1) + bias.float(), 1e-2)
        assert gemv.launch(x, w, config=config).dtype == torch.bfloat16

    # Fused in: RMS norm of the input (times its weight), a residual add, SiLU·mul of row pairs.
    n, k = 70, 300
    w, bias, residual = torch.randn(n, k), torch.randn(n), torch.randn(n)
    x, norm_weight = torch.randn(k), torch.rand(k) + 0.5
    normed = x * torch.rsqrt(x.pow(2).mean() + 1e-5) * norm_weight
    config = gemv.GemvConfig(4, 128, 4, 1)
    close(gemv.launch(x, w, None, bias, config, norm_weight=norm_weight, eps=1e-5), w @ normed + bias, 1e-5)
    pairs = w @ normed + bias
    glu = torch.nn.functional.silu(pairs[0::2]) * pairs[1::2]
    for c in (config, gemv.GemvConfig(1, 128, 4, 1)):  # pairs straddle no program (one row: two)
        close(gemv.launch(x, w, None, bias, c, norm_weight=norm_weight, eps=1e-5, glu=True, residual=residual[: n // 2]),
              glu + residual[: n // 2], 1e-5)
    q, scale = rowwise_fp8(w)
    out = gemv.gemv(x[None, None], q, scale.reshape(-1), bias, norm_weight=norm_weight, eps=1e-5, residual=residual[None, None])
    assert out.shape == (1, 1, n)
    close(out, (q.float() @ normed) * scale.reshape(-1) + bias + residual, 1e-5)

    # The op, through a routed linear layer and an FP8 layer, against F.linear.
    linear = torch.nn.Linear(96, 40).to(torch.bfloat16)
    fp8 = RowwiseFloat8Linear.from_linear(torch.nn.Linear(96, 48).to(torch.bfloat16))
    assert use_gemv(torch.nn.Sequential(linear, fp8)) == 2
    x = torch.randn(1, 1, 96, dtype=torch.bfloat16)
    out = linear(x)
    assert out.shape == (1, 1, 40)
    close(out, torch.nn.functional.linear(x.float(), linear.weight.float(), linear.bias.float()), 1e-2)
    ref = torch.nn.functional.linear(x.float(), fp8.fp8_weight.float()) * fp8.weight_scale + fp8.bias.float()
    close(fp8(x), ref, 1e-2)  # weight-only: the activation is not quantized
    print("ok")
""")


@needs_triton
def test_kernel_matches_reference_products_in_the_interpreter():
    assert run_interpreted(INTERPRETED).endswith("ok")


def test_default_configs_cover_every_shape_within_the_row():
    shapes = ((512, 3584, 2), (3584, 18944, 2), (152064, 3584, 1), (7, 40, 2), (4608, 3584, 1), (4608, 3584, 2))
    for (n, k, nbytes), fusion in itertools.product(shapes, (None, "norm", "residual")):
        config = gemv.default_config(n, k, nbytes, fusion)
        assert config.block_k <= max(16, 1 << (k - 1).bit_length())
        assert config.block_n >= 1 and config.num_warps in (4, 8)
    # a fused call may take its own config (the bf16 q/k/v product with the norm prologue)
    assert gemv.default_config(4608, 3584, 2, "norm") != gemv.default_config(4608, 3584, 2)


@pytest.mark.parametrize("strict", [False, True])
def test_one_row_is_decided_from_static_sizes_only(strict):
    assert gemv.one_row(torch.zeros(1, 1, 8)) and gemv.one_row(torch.zeros(8))
    assert not gemv.one_row(torch.zeros(1, 2, 8))

    class Probe(torch.nn.Module):
        def forward(self, x):
            return x * 3 if gemv.one_row(x) else x * 2

    rows = torch.export.Dim("rows", min=2, max=64)
    dynamic = torch.export.export(Probe(), (torch.zeros(4, 8),), dynamic_shapes=({0: rows},), strict=strict)
    one = torch.export.export(Probe(), (torch.zeros(1, 8),), strict=strict)
    assert torch.equal(dynamic.module()(torch.ones(5, 8)), torch.full((5, 8), 2.0))  # traced without a guard
    assert torch.equal(one.module()(torch.ones(1, 8)), torch.full((1, 8), 3.0))



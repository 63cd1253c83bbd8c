"""aoti.gemv: the one-row Triton kernel (run by Triton's CPU interpreter here), the op, and the
routing of linear layers. On a GPU the kernel is compiled into AOTI packages
(benchmarks/gpu/gemv.py, llm_decode.py); here the interpreter checks its arithmetic."""

from __future__ import annotations

import itertools
import textwrap

import pytest
import torch

from aoti import gemv
from aoti.quant import RowwiseFloat8Linear
from tests.interpreted import needs_triton, run_interpreted

# Run in a child: TRITON_INTERPRET is read when a kernel is defined, at import.
INTERPRETED = textwrap.dedent("""
    import torch
    from aoti import gemv
    from aoti.quant import RowwiseFloat8Linear, rowwise_fp8

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
    assert gemv.use_gemv(torch.nn.Sequential(linear, fp8)) == 2
    x = torch.randn(1, 1, 96, dtype=torch.bfloat16)
    out = linear(x)
    assert out.shape == (1, 1, 40)
    close(out, torch.nn.functional.linear(x.float(), linear.weight.float(), linear.bias.float()), 1e-2)
    ref = torch.nn.functional.linear(x.float(), fp8.fp8_weight.float()) * fp8.weight_scale + fp8.bias.float()
    close(fp8(x), ref, 1e-2)  # weight-only: the activation is not quantized
    print("ok")
""")


# A build whose graphs can't hold the kernel falls back to one without it, and remembers that. Under
# the interpreter `torch.export` can't trace the kernel (it runs it on fake tensors and fails): a real
# build failure, of the kind Inductor's C++ wrapper has had on GPUs now and then.
FALLBACK = textwrap.dedent("""
    import sys, time, torch, aoti
    from aoti import gemv

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))

    cache = aoti.Cache(sys.argv[1])
    first = model()
    with aoti.capture(first) as call:
        first(torch.randn(1, 32))
    artifact = aoti.compile(first, call, aoti.CompileOptions(preset="decode"), cache=cache)  # gemv on with it
    assert artifact.status.fallbacks and artifact.status.fallbacks[0].startswith("gemv -> off: the build with aoti.gemv failed"), artifact.status.fallbacks
    assert artifact.manifest["key_fields"]["options"]["gemv"] is False
    assert not first[0].one_row_kernel  # eager is unrouted again, as the graphs are
    x = torch.randn(1, 32)
    eager = first(x)
    aoti.apply(artifact, first)
    torch.testing.assert_close(first(x), eager)

    second = model()  # a new process would do the same: no second try of the failed build
    start = time.perf_counter()
    again = aoti.compile(second, call, aoti.CompileOptions(gemv=True, preset="decode"), cache=cache)
    assert again.status.cache_hit and "an earlier build of package" in again.status.fallbacks[0], again.status.fallbacks
    assert again.key == artifact.key
    print("ok", round(time.perf_counter() - start, 2))
""")


@needs_triton
def test_kernel_matches_reference_products_in_the_interpreter():
    assert run_interpreted(INTERPRETED).endswith("ok")


@needs_triton
def test_a_failed_build_with_the_kernel_falls_back_once_and_is_remembered(tmp_path):
    assert run_interpreted(FALLBACK, str(tmp_path)).splitlines()[-1].startswith("ok")


def test_default_configs_cover_every_shape_within_the_row():
    shapes = ((512, 3584, 2), (3584, 18944, 2), (152064, 3584, 1), (7, 40, 2), (4608, 3584, 1), (4608, 3584, 2))
    for (n, k, nbytes), fusion in itertools.product(shapes, (None, "norm", "residual")):
        config = gemv.default_config(n, k, nbytes, fusion)
        assert config.block_k <= max(16, 1 << (k - 1).bit_length())
        assert config.block_n >= 1 and config.num_warps in (4, 8)
    # a fused call may take its own config (the bf16 q/k/v product with the norm prologue)
    assert gemv.default_config(4608, 3584, 2, "norm") != gemv.default_config(4608, 3584, 2)


@needs_triton
def test_routing_keeps_parameters_and_state_and_can_be_undone():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[0].weight
    assert gemv.use_gemv(model) == 2
    assert type(model[0]) is gemv.GemvLinear and model[0].weight is weight
    assert model.state_dict().keys() == state.keys()
    x = torch.randn(1, 8)
    # On the CPU (no interpreter) the routed layer is F.linear itself.
    torch.testing.assert_close(model(x), torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(x, state["0.weight"], state["0.bias"])), state["2.weight"], state["2.bias"]))
    assert gemv.use_gemv(model, enabled=False) == 0
    assert not model[0].one_row_kernel and not model[2].one_row_kernel


@needs_triton
def test_only_plain_linear_layers_and_fp8_layers_are_routed():
    mha = torch.nn.MultiheadAttention(16, 2)  # its out_proj is an nn.Linear subclass read by weight, never called
    fp8 = RowwiseFloat8Linear.from_linear(torch.nn.Linear(16, 16))
    assert not fp8.one_row_kernel  # FP8 layers keep `_scaled_mm` until routed
    assert gemv.use_gemv(torch.nn.ModuleDict({"mha": mha, "fp8": fp8})) == 1
    assert type(mha.out_proj) is torch.nn.modules.linear.NonDynamicallyQuantizableLinear
    assert fp8.one_row_kernel


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


def test_compile_on_the_cpu_records_no_gemv(tmp_path):
    import aoti

    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with aoti.capture(model) as call:
        model(torch.randn(1, 8))
    artifact = aoti.compile(model, call, aoti.CompileOptions(gemv=True), cache=aoti.Cache(tmp_path))
    assert artifact.manifest["key_fields"]["options"]["gemv"] is False  # nothing to route on the CPU
    assert type(model[0]) is torch.nn.Linear


@needs_triton
def test_int8_weights_are_unrouted_when_quantized():
    pytest.importorskip("torchao")
    from aoti.quant import quantize

    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    gemv.use_gemv(model)
    assert model[0].one_row_kernel
    quantize(model, "int8_weight_only")
    assert not model[0].one_row_kernel  # torchao's subclass weights are not the kernel's to read
    assert gemv.use_gemv(model) == 0

"""aoti.fp8_rows (the one-pass row-wise FP8 quantization kernel, run by Triton's CPU interpreter here)
and aoti.reductions (Inductor's one-pass choice for wide rows). On a GPU both are compiled into AOTI
packages (benchmarks/gpu/flux_step.py, `one_pass_rows`); here the interpreter checks the kernel's
arithmetic, before the e4m3 cast that the interpreter gets wrong."""

from __future__ import annotations

import textwrap

import torch

from aoti import fp8_rows, quant
from tests.interpreted import needs_triton, run_interpreted

INTERPRETED = textwrap.dedent("""
    import torch
    from aoti import fp8_rows, quant

    torch.manual_seed(0)
    # widths that fill the block (4096) and leave most of it masked (5000 of 8192); bf16 and fp32 in;
    # rows given with a stride (a slice of a wider tensor); an all-zero row
    for rows, width, dtype in ((3, 4096, torch.float32), (5, 5000, torch.bfloat16)):
        wide = torch.randn(rows, width + 64, dtype=dtype) * torch.logspace(-3, 3, rows)[:, None].to(dtype)
        wide[1] = 0
        x = wide[:, :width]
        values, scale = fp8_rows.launch(x, out_dtype=torch.float32)
        amax = x.abs().amax(-1, keepdim=True)
        ref_scale = amax.float().clamp(min=quant.SCALE_FLOOR) / quant.FP8_MAX
        assert scale.shape == (rows, 1) and scale.dtype == torch.float32
        torch.testing.assert_close(scale, ref_scale, rtol=1e-6, atol=0)
        ref = (x.float() / ref_scale).clamp(-quant.FP8_MAX, quant.FP8_MAX)
        torch.testing.assert_close(values, ref, rtol=1e-6, atol=1e-6)
        assert values.abs().amax() <= quant.FP8_MAX and float(values[1].abs().max()) == 0.0
        # each row's largest value lands on the format's largest (the scale is the row's maximum)
        assert torch.allclose(values[[0, 2]].abs().amax(-1), torch.full((2,), quant.FP8_MAX))
    print("ok")
""")


@needs_triton
def test_kernel_arithmetic_in_the_interpreter():
    assert run_interpreted(INTERPRETED).endswith("ok")


def test_quantization_stays_on_the_formula_off_fp8_gpus():
    x = torch.randn(4, 8192, dtype=torch.bfloat16)
    assert not fp8_rows.serves(x)  # the CPU
    values, scale = quant.rowwise_fp8(x)
    ref_values, ref_scale = quant.fp8_scaled(x, x.abs().amax(-1, keepdim=True))
    assert torch.equal(values.view(torch.uint8), ref_values.view(torch.uint8)) and torch.equal(scale, ref_scale)


def test_used_switches_the_kernel_off_inside_the_block_only():
    assert fp8_rows._enabled
    with fp8_rows.used(False):
        assert not fp8_rows._enabled
        with fp8_rows.used(True):
            assert fp8_rows._enabled
        assert not fp8_rows._enabled
    assert fp8_rows._enabled


def test_one_pass_rows_installs_inductor_choices_inside_the_block_only():
    from torch._inductor.virtualized import V

    from aoti import reductions

    before = type(V.choices)
    with reductions.one_pass_rows():
        assert isinstance(V.choices, reductions.OnePassRows)
    assert type(V.choices) is before
    with reductions.one_pass_rows(False):
        assert type(V.choices) is before
    configs = reductions.inductor_configs()
    if configs:  # torch versions with the setting: the choices are part of Inductor's cache key
        assert configs["inductor_choices_class"]().uuid().endswith(str(reductions.PERSISTENT_LIMIT))

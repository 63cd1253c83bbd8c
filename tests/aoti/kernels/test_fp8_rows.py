"""aoti.fp8_rows (the one-pass row-wise FP8 quantization kernel, run by Triton's CPU interpreter here)
and aoti.reductions (Inductor's one-pass choice for wide rows). On a GPU both are compiled into AOTI
packages ; here the interpreter checks the kernel's
arithmetic, before the e4m3 cast that the interpreter gets wrong."""

from __future__ import annotations

import textwrap

import torch
import torch.nn.functional as F

from aoti.kernels import fp8, fp8_rows
from aoti.passes import fp8_producers
from tests.interpreted import needs_triton, run_interpreted

INTERPRETED = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from aoti.kernels import fp8, fp8_rows
    from aoti.passes import fp8_producers

    torch.manual_seed(0)

    def reference(rows):
        scale = rows.abs().amax(-1, keepdim=True).float().clamp(min=fp8.SCALE_FLOOR) / fp8.FP8_MAX
        return (rows.float() / scale).clamp(-fp8.FP8_MAX, fp8.FP8_MAX), scale

    # widths that fill the block (4096) and leave most of it masked (5000 of 8192); bf16 and fp32 in;
    # rows given with a stride (a slice of a wider tensor); an all-zero row; rows 1e-3 to 1e3 in size
    for rows, width, dtype in ((3, 4096, torch.float32), (5, 5000, torch.bfloat16)):
        wide = torch.randn(rows, width + 64, dtype=dtype) * torch.logspace(-3, 3, rows)[:, None].to(dtype)
        wide[1] = 0
        x = wide[:, :width]
        values, scale = fp8_rows.launch(x, out_dtype=torch.float32)
        ref_values, ref_scale = reference(x)
        assert scale.shape == (rows, 1) and scale.dtype == torch.float32
        torch.testing.assert_close(scale, ref_scale, rtol=1e-6, atol=0)
        torch.testing.assert_close(values, ref_values, rtol=1e-6, atol=1e-6)
        assert float(values[1].abs().max()) == 0.0
        # each row's largest value lands on the format's largest (the scale is the row's maximum)
        assert torch.allclose(values[[0, 2]].abs().amax(-1), torch.full((2,), fp8.FP8_MAX))

    # [lead | gelu(x)]: the lead's maximum and the GELU's both decide the scale
    for lead_scale in (0.1, 10.0):
        lead, x = torch.randn(6, 3000) * lead_scale, torch.randn(6, 4100) * 3
        values, scale = fp8_rows.launch(x, lead, gelu=True, out_dtype=torch.float32)
        ref_values, ref_scale = reference(torch.cat([lead, F.gelu(x, approximate="tanh")], -1))
        torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)
        torch.testing.assert_close(values, ref_values, rtol=1e-4, atol=1e-3)

    # bf16 in: the GELU's output rounded to bf16 first, as an eager GELU's (the interpreter truncates
    # where the GPU rounds to nearest, so: within one bf16 step of eager's, and on bf16's grid)
    lead, x = torch.randn(6, 3000, dtype=torch.bfloat16), torch.randn(6, 4100, dtype=torch.bfloat16) * 3
    ref_values, ref_scale = reference(torch.cat([lead, F.gelu(x, approximate="tanh")], -1))
    for round_gelu in (True, False):
        values, scale = fp8_rows.launch(x, lead, gelu=True, out_dtype=torch.float32, round_gelu=round_gelu)
        torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)
        torch.testing.assert_close(values, ref_values, rtol=1e-2, atol=1e-2)
        gelu = values[:, 3000:] * scale
        off_grid = float(((gelu.bfloat16().float() - gelu).abs() / gelu.abs().clamp(min=1e-6)).max())
        assert (off_grid < 1e-5) if round_gelu else (off_grid > 1e-4), (round_gelu, off_grid)

    # the rewritten graph (exported and rewritten by the test, without the interpreter) against the original
    import sys
    original = torch.export.load(sys.argv[1]).module()
    rewritten = torch.export.load(sys.argv[1]).module()
    assert fp8_producers.fuse_producers(rewritten) == 2
    lead, x = torch.randn(1, 4, 70, 256), torch.randn(1, 70, 4096) * 2
    for (values, scale), (ref_values, ref_scale) in zip(rewritten(lead, x), original(lead, x)):
        assert values.shape == ref_values.shape and values.dtype == ref_values.dtype
        torch.testing.assert_close(scale, ref_scale, rtol=1e-5, atol=0)
        deq, ref = values.float() * scale, ref_values.float() * ref_scale
        assert float((deq - ref).norm() / ref.norm()) < 1e-3
    print("ok")
""")


class Producers(torch.nn.Module):
    """A FLUX.1 single block's `proj_out` input (attention output beside GELU) and a double block's
    GELU output (an inference dropout after it), each quantized by the kernel's op."""

    def forward(self, lead: torch.Tensor, x: torch.Tensor):
        rows = torch.cat([lead.transpose(1, 2).reshape(1, 70, -1), F.gelu(x, approximate="tanh")], -1)
        mlp = F.dropout(F.gelu(x, approximate="tanh"), 0.1, training=False)  # diffusers' FeedForward
        return fp8_rows.quantize(rows.reshape(70, -1)), fp8_rows.quantize(mlp.reshape(70, -1))


@needs_triton
def test_kernel_and_graph_rewrite_in_the_interpreter(tmp_path):
    program = torch.export.export(Producers(), (torch.randn(1, 4, 70, 256), torch.randn(1, 70, 4096)))
    torch.export.save(program, tmp_path / "producers.pt2")
    assert run_interpreted(INTERPRETED, str(tmp_path / "producers.pt2")).endswith("ok")


@needs_triton
def test_graph_rewrite_moves_gelu_and_cat_into_the_op():
    graph = torch.export.export(Producers(), (torch.randn(1, 4, 70, 256), torch.randn(1, 70, 4096))).module()
    assert fp8_producers.fuse_producers(graph) == 2
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert not any("gelu" in t or "cat" in t or "dropout" in t for t in targets), targets
    fused = [n for n in graph.graph.nodes if n.target is torch.ops.aoti_studio.rowwise_fp8.default]
    assert [n.kwargs["gelu"] for n in fused] == [True, True]
    assert sorted(n.kwargs["lead"] is not None for n in fused) == [False, True]
    assert fp8_producers.fuse_producers(graph) == 0  # nothing left to move


def test_quantization_stays_on_the_formula_off_fp8_gpus():
    x = torch.randn(4, 8192, dtype=torch.bfloat16)
    assert not fp8_rows.serves(x)  # the CPU
    values, scale = fp8_rows.rowwise_fp8(x)
    ref_values, ref_scale = fp8.fp8_scaled(x, x.abs().amax(-1, keepdim=True))
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

    from aoti.passes import reductions

    before = type(V.choices)
    keyed = hasattr(torch._inductor.config, "inductor_choices_class")  # torch versions with the setting
    with reductions.one_pass_rows():
        assert isinstance(V.choices, reductions.OnePassRows)
        if keyed:  # the choices are part of Inductor's cache key
            choices = torch._inductor.config.inductor_choices_class
            assert choices is reductions.OnePassRows
            assert choices().uuid().endswith(str(reductions.PERSISTENT_LIMIT))
    assert type(V.choices) is before
    assert not keyed or torch._inductor.config.inductor_choices_class is None
    with reductions.one_pass_rows(False):
        assert type(V.choices) is before
        assert not keyed or torch._inductor.config.inductor_choices_class is None

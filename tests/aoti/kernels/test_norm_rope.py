"""aoti.norm_rope: the query/key RMS norm + rotary embedding kernel (run by Triton's CPU interpreter here)
against diffusers' own modules, and the FLUX attention processor that puts it (and FP8 attention) into
an exported graph. On a GPU both are compiled into AOTI packages ."""

from __future__ import annotations

import textwrap

import torch

from aoti.integrations import diffusers as diffusers_integration
from aoti.kernels import norm_rope
from tests import tiny
from tests.interpreted import needs_triton, run_interpreted

INTERPRETED = textwrap.dedent("""
    import sys
    import torch
    from diffusers.models.embeddings import apply_rotary_emb
    from aoti.kernels import fp8_attention, norm_rope  # noqa: F401 (the ops the loaded graphs call)
    from tests import tiny

    torch.manual_seed(0)

    def rms_norm(dim, dtype):
        norm = torch.nn.RMSNorm(dim, eps=1e-6)
        torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
        return norm.to(dtype)

    def rotary(tokens, dim):
        angles = torch.randn(tokens, dim // 2) * 3
        return angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)

    # 3 heads (a block of 8 with 5 masked), batch 2, the text tokens (lead) given as a strided slice
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        x, lead = torch.randn(2, 5, 3, 16, dtype=dtype) * 3, torch.randn(2, 4, 3, 32, dtype=dtype)[..., :16]
        norm_x, norm_lead = rms_norm(16, dtype), rms_norm(16, dtype)
        cos, sin = rotary(9, 16)
        with torch.no_grad():
            ref = apply_rotary_emb(torch.cat([norm_lead(lead), norm_x(x)], 1), (cos, sin), sequence_dim=1)
            out, scale = norm_rope.launch(x, norm_x.weight, cos, sin, 1e-6, lead, norm_lead.weight)
            assert scale is None and out.dtype == dtype and out.shape == ref.shape
            torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
            alone = norm_rope.launch(x, norm_x.weight, cos[4:], sin[4:], 1e-6)[0]
            torch.testing.assert_close(alone, ref[:, 4:], rtol=tol, atol=tol)
            # FP8: one scale, the bound sqrt(D) * max|weight| / 448, the values before their cast (the
            # interpreter's e4m3 cast rounds wrongly)
            values, scale = norm_rope.launch(x, norm_x.weight, cos, sin, 1e-6, lead, norm_lead.weight,
                                             fp8=True, out_dtype=torch.float32)
            bound = 16 ** 0.5 * max(float(n.weight.float().abs().max()) for n in (norm_x, norm_lead)) / 448
            assert scale.shape == (2, 3, 9) and torch.allclose(scale, torch.full_like(scale, bound))
            assert float(values.abs().max()) <= 448
            torch.testing.assert_close(values * scale.transpose(1, 2)[..., None], ref.float(), rtol=tol, atol=tol)

    # the graphs exported by the test (without the interpreter) against the eager model
    model, program = tiny.flux(head_dim=32), torch.export.load(sys.argv[1]).module()
    fp8_model, fp8_program = tiny.flux(head_dim=32).to(torch.bfloat16), torch.export.load(sys.argv[2]).module()
    torch.manual_seed(1)
    inputs = tiny.flux_inputs()
    fp8_inputs = {k: v.bfloat16() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with torch.no_grad():
        torch.testing.assert_close(program(**inputs)[0], model(**inputs)[0], rtol=1e-4, atol=1e-4)
        out, ref = fp8_program(**fp8_inputs)[0].float(), fp8_model(**fp8_inputs)[0].float()
    assert float((out - ref).norm() / ref.norm()) < 0.05
    print("ok")
""")


def _export(fp8_attention: bool, monkeypatch) -> torch.export.ExportedProgram:
    """The tiny FLUX model exported with the fused processors (the kernel taken as served on the CPU)."""
    monkeypatch.setattr(norm_rope, "serves", lambda x: True)
    model = tiny.flux(head_dim=32).to(torch.bfloat16 if fp8_attention else torch.float32)  # FP8 attention: heads >= 32
    inputs = {k: v.to(model.dtype) if isinstance(v, torch.Tensor) else v for k, v in tiny.flux_inputs().items()}
    monkeypatch.setattr(diffusers_integration, "serves", lambda x: True)
    assert diffusers_integration.fuse_flux_attention(model, fp8_attention=fp8_attention) == 2  # a double and a single block
    with torch.no_grad():
        return torch.export.export(model, (), inputs)


def _targets(program: torch.export.ExportedProgram) -> list[str]:
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


@needs_triton
def test_kernel_processor_and_exported_graphs_in_the_interpreter(tmp_path, monkeypatch):
    program, fp8_program = _export(False, monkeypatch), _export(True, monkeypatch)
    targets, fp8_targets = _targets(program), _targets(fp8_program)
    # each attention's query and key: the norms, the text/image join and the rotation are one op
    assert targets.count("aoti_studio.norm_rope.default") == 4
    assert not any("rms_norm" in t or "rsqrt" in t for t in targets), targets
    assert fp8_targets.count("aoti_studio.norm_rope_fp8.default") == 4
    assert fp8_targets.count("aoti_studio.fp8_attention_quantized.default") == 2
    assert not any("scaled_dot_product" in t for t in fp8_targets), fp8_targets
    torch.export.save(program, tmp_path / "flux.pt2")
    torch.export.save(fp8_program, tmp_path / "flux_fp8.pt2")
    assert run_interpreted(INTERPRETED, str(tmp_path / "flux.pt2"), str(tmp_path / "flux_fp8.pt2")).endswith("ok")

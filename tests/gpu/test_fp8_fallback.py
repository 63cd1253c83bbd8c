"""FP8's self-tested fallback on a real GPU: both `torch._scaled_mm` layouts pass their self-test on a
Hopper card; with row-wise scales failing as they do on RTX PRO Blackwell (pytorch issue 192707), the
per-tensor layers run on the GPU's own FP8 kernels, compiled and eager, and the one-row kernel reads
their scale like a per-row one."""

from __future__ import annotations

import torch

import aoti
from tests import tiny
from tests.aoti.transforms.test_quantize import _scaled_mm_without_row_scales
from tests.gpu.conftest import rel


def test_both_scale_layouts_pass_their_self_test_here():
    from aoti.kernels.fp8 import scaled_mm_fails

    device = torch.device("cuda")
    assert scaled_mm_fails(device, "row") is None and scaled_mm_fails(device, "tensor") is None


def test_per_tensor_fp8_compiles_and_matches_eager_on_the_gpu(cache, monkeypatch):
    from aoti.transforms.quantize import RowwiseFloat8Linear

    _scaled_mm_without_row_scales(monkeypatch)
    model = tiny.flux(head_dim=64).to("cuda", torch.bfloat16)
    reference = tiny.flux(head_dim=64).to("cuda", torch.bfloat16)
    fallbacks = aoti.transform(model, [aoti.Float8Rowwise()])
    assert any("one per tensor" in f for f in fallbacks), fallbacks
    assert all(m.per_tensor for m in model.modules() if isinstance(m, RowwiseFloat8Linear))

    def inputs():
        return {k: v.to("cuda", torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else
                (v.to("cuda") if isinstance(v, torch.Tensor) else v) for k, v in tiny.flux_inputs(img=64).items()}

    with aoti.capture(model) as call, torch.no_grad():
        model(**inputs())
    status = aoti.apply(aoti.compile(model, call, cache=cache), model)
    assert status.runtime == "aoti", status.reason
    torch.manual_seed(5)
    fresh = inputs()
    with torch.no_grad():
        compiled, eager, exact = (m(**fresh)[0] for m in (model, model.forward.eager, reference))
    assert rel(compiled, eager) < 2e-2 and rel(compiled, exact) < 0.1
    aoti.restore(model)


def test_the_one_row_kernel_reads_a_per_tensor_scale_like_a_per_row_one():
    from aoti.kernels.gemv import gemv
    from aoti.transforms.quantize import RowwiseFloat8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(3584, 512, device="cuda", dtype=torch.bfloat16)
    layer = RowwiseFloat8Linear.from_linear(linear, per_tensor=True)
    assert layer.per_tensor and layer.weight_scale.shape == (1, 1)
    x = torch.randn(1, 1, 3584, device="cuda", dtype=torch.bfloat16)
    weight, scale, bias = layer.kernel_operands()
    assert scale.shape == (512,) and bool((scale == layer.weight_scale.reshape(())).all())
    with torch.no_grad():
        dequantized = torch.nn.functional.linear(x.float(), weight.float() * scale[:, None], bias.float())
        assert rel(gemv(x, weight, scale, bias), dequantized) < 1e-2  # weight-only: the e4m3 weight exactly
        assert rel(layer(x), linear(x)) < 0.1  # `_scaled_mm`, activations in e4m3 too

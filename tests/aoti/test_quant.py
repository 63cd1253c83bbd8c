import pytest
import torch

import aoti
from tests import tiny


def test_int8_weight_only_on_cpu_matches_quantized_eager(cache):
    model = tiny.MLP()
    reference = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(8, 32))
    artifact = aoti.compile(model, call, aoti.CompileOptions(quantization="int8_weight_only"), cache=cache)
    status = aoti.apply(artifact, model)
    assert status.runtime == "aoti" and status.quantization == "int8_weight_only" and not status.fallbacks
    assert type(model.up.weight).__name__ != "Parameter"  # really quantized
    x = torch.randn(8, 32)
    with torch.no_grad():
        compiled, eager, fp32 = model(x), model.forward.eager(x), reference(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert (compiled - fp32).abs().max() < 0.05  # int8 weights stay close to the float model


def test_fp8_on_cpu_falls_back_visibly_with_the_reason():
    decision = aoti.decide_quantization("fp8_rowwise", torch.device("cpu"))
    assert decision.applied == "none" and "CUDA" in decision.reason


def test_fp8_request_is_recorded_as_a_fallback_in_the_status(cache, mlp_artifact):
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    artifact = aoti.compile(model, call, aoti.CompileOptions(quantization="fp8_rowwise"), cache=cache)
    assert artifact.key == mlp_artifact[1].key  # same graph as "none": a cache hit, no compile
    assert artifact.status.quantization == "none"
    assert artifact.status.fallbacks and artifact.status.fallbacks[0].startswith("fp8_rowwise -> none")


def test_fp8_rowwise_linear_is_the_scaled_product_of_its_fp8_parts():
    from aoti.quant import RowwiseFloat8Linear, rowwise_fp8

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    fp8 = RowwiseFloat8Linear.from_linear(linear)
    assert fp8.fp8_weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 48)
    assert not fp8.weight.is_floating_point()  # `model.dtype` and `module.to(dtype)` pass it by
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        out, exact = fp8(x), linear(x)
        q, scale = rowwise_fp8(x.reshape(-1, 64))
        by_hand = (q.float() * scale) @ (fp8.fp8_weight.float() * fp8.weight_scale.t()).t() + linear.bias
    assert out.shape == (2, 5, 48)
    torch.testing.assert_close(out.reshape(-1, 48), by_hand, rtol=1e-4, atol=1e-4)
    assert 1e-3 < rel(out, exact) < 0.08  # really 8-bit (3 mantissa bits), and still the same function
    zeros = fp8(torch.zeros(1, 64))  # an all-zero row: no division by zero
    torch.testing.assert_close(zeros, linear.bias.detach().unsqueeze(0))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("strict", [False, True])
def test_fp8_rowwise_models_export_and_compile_like_their_eager_run(cache, strict):
    """FP8 weights are plain tensors (uint8 bits viewed as e4m3): non-strict export (diffusers FLUX) and Dynamo's strict export
    (transformers Llama, as the text engine uses) both trace them; compiled == eager FP8 on fresh inputs."""
    from aoti.quant import RowwiseFloat8Linear, quantize

    if strict:
        model, reference, make = tiny.llama(), tiny.llama(), lambda: (tiny.token_ids(12),)
    else:
        model, reference, make = tiny.flux(), tiny.flux(), lambda: tiny.flux_inputs()
    quantize(model, "fp8_rowwise")
    assert sum(isinstance(m, RowwiseFloat8Linear) for m in model.modules()) >= 6
    assert model.dtype == torch.float32  # diffusers' and transformers' `dtype` still see the float model

    def run(module, inputs):
        with torch.no_grad():
            out = module(*inputs) if isinstance(inputs, tuple) else module(**inputs)
        return (out.logits if strict else out[0]).float()

    with aoti.capture(model) as call:
        run(model, make())
    options = aoti.CompileOptions(strict=strict, quantization="fp8_rowwise")  # already applied: compiled as it is
    status = aoti.apply(aoti.compile(model, call, options, cache=cache), model)
    assert status.runtime == "aoti" and status.quantization == "fp8_rowwise" and not status.fallbacks, status
    torch.manual_seed(1)
    inputs = make()
    compiled, eager, exact = run(model, inputs), run(model.forward.eager, inputs), run(reference, inputs)
    assert rel(compiled, eager) < 1e-4
    assert rel(compiled, exact) < 0.1
    assert aoti.status_of(model).guard_fallbacks == 0


def test_compiling_an_fp8_module_leaves_no_copy_of_its_weights(tmp_path):
    """Inductor's AOT compile clones the buffers of the module it compiles and keeps the clones: FP8
    weights held as buffers were copied once per graph (three times their size stayed on an H200).
    As parameters they are not copied."""
    import gc

    from aoti.quant import quantize

    def fp8_storages() -> set[int]:
        gc.collect()
        found = set()
        for obj in gc.get_objects():
            try:
                if type(obj) in (torch.Tensor, torch.nn.Parameter) and obj.dtype in (torch.uint8, torch.float8_e4m3fn):
                    found.add(obj.untyped_storage().data_ptr())
            except RuntimeError:  # fake tensors left by tracing have no storage
                continue
        return found

    model = tiny.MLP()
    quantize(model, "fp8_rowwise")
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    before = fp8_storages()
    aoti.compile(model, call, aoti.CompileOptions(quantization="fp8_rowwise"), cache=aoti.Cache(tmp_path))
    assert not fp8_storages() - before


def test_a_quantized_module_is_not_silently_compiled_as_another_recipe(cache):
    """Quantizing replaced the float weights: asking for another recipe (or none) raises and says to
    reload, instead of compiling FP8 weights under a "none" label."""
    from aoti.quant import quantize

    model = tiny.MLP()
    quantize(model, "fp8_rowwise")
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    for recipe in ("none", "int8_weight_only"):
        with pytest.raises(ValueError, match="Reload the model"):
            aoti.compile(model, call, aoti.CompileOptions(quantization=recipe), cache=cache)

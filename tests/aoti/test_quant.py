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

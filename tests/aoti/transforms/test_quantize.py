import pytest
import torch

import aoti
from tests import tiny


def test_int8_weight_only_on_cpu_matches_quantized_eager(cache):
    model = tiny.MLP()
    reference = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(8, 32))
    assert aoti.transform(model, [aoti.Int8WeightOnly()]) == []
    artifact = aoti.compile(model, call, cache=cache)
    status = aoti.apply(artifact, model)
    assert status.runtime == "aoti" and status.quantization == "int8_weight_only" and not status.fallbacks
    assert type(model.up.weight).__name__ != "Parameter"  # really quantized
    x = torch.randn(8, 32)
    with torch.no_grad():
        compiled, eager, fp32 = model(x), model.forward.eager(x), reference(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert (compiled - fp32).abs().max() < 0.05  # int8 weights stay close to the float model


def test_fp8_on_cpu_is_skipped_visibly_with_the_reason():
    model = tiny.MLP()
    fallbacks = aoti.transform(model, [aoti.Float8Rowwise()])
    assert fallbacks == ["Float8Rowwise -> skipped: FP8 needs a CUDA GPU; this device is the CPU"]
    assert aoti.transforms_of(model) == () and type(model.up) is torch.nn.Linear


def test_fp8_request_is_recorded_as_a_fallback_in_the_status(cache, mlp_artifact):
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    aoti.transform(model, [aoti.Float8Rowwise()])
    artifact = aoti.compile(model, call, cache=cache)
    assert artifact.key == mlp_artifact[1].key  # same graph as "none": a cache hit, no compile
    assert artifact.status.quantization == "none"
    assert artifact.status.fallbacks[0].startswith("Float8Rowwise -> skipped: FP8 needs a CUDA GPU")


def test_fp8_rowwise_linear_is_the_scaled_product_of_its_fp8_parts():
    from aoti.kernels.fp8_rows import rowwise_fp8
    from aoti.transforms.quantize import RowwiseFloat8Linear

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
    from aoti.transforms.quantize import RowwiseFloat8Linear

    if strict:
        model, reference, make = tiny.llama(), tiny.llama(), lambda: (tiny.token_ids(12),)
    else:
        model, reference, make = tiny.flux(), tiny.flux(), lambda: tiny.flux_inputs()
    aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])  # torch's own `_scaled_mm` on the CPU
    assert sum(isinstance(m, RowwiseFloat8Linear) for m in model.modules()) >= 6
    assert model.dtype == torch.float32  # diffusers' and transformers' `dtype` still see the float model

    def run(module, inputs):
        with torch.no_grad():
            out = module(*inputs) if isinstance(inputs, tuple) else module(**inputs)
        return (out.logits if strict else out[0]).float()

    with aoti.capture(model) as call:
        run(model, make())
    status = aoti.apply(aoti.compile(model, call, aoti.CompileOptions(strict=strict), cache=cache), model)
    assert status.runtime == "aoti" and status.quantization == "fp8_rowwise", status
    assert all(f.startswith("Float8Rowwise -> partly:") for f in status.fallbacks), status.fallbacks  # tiny sizes
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
    aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    before = fp8_storages()
    aoti.compile(model, call, cache=aoti.Cache(tmp_path))
    assert not fp8_storages() - before


def test_compile_leaves_the_module_as_it_was(cache):
    """`aoti.compile` exports and builds; it rewrites nothing (the transforms did, before)."""
    model = tiny.qwen2()
    aoti.transform(model, [aoti.FuseProjections()])
    with aoti.capture(model) as call:
        model(tiny.token_ids(6), use_cache=False)
    before = (repr(model), {n: (t.data_ptr(), t.dtype) for n, t in model.state_dict(keep_vars=True).items()})
    artifact = aoti.compile(model, call, cache=cache)
    assert (repr(model), {n: (t.data_ptr(), t.dtype) for n, t in model.state_dict(keep_vars=True).items()}) == before
    assert artifact.manifest["transforms"] == [{"name": "FuseProjections", "version": 1}]
    assert artifact.ref()["transforms"] == artifact.manifest["transforms"]


@pytest.mark.parametrize("recipe", [aoti.Float8Rowwise(emulate=True), aoti.Int8WeightOnly()], ids=["fp8", "int8"])
def test_quantization_on_off_on_gives_the_float_outputs_back_exactly(cache, recipe):
    """Quantized, compiled, restored, quantized again: with it off the module returns the float
    model's outputs bit for bit (weights kept off the device meanwhile), with no reload; on again,
    the same package serves (a cache hit) and the same quantized outputs."""
    model = tiny.qwen2()  # ties no weights; the tied case is below
    ids = tiny.token_ids(9)

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return model(ids, use_cache=False).logits

    float_out = logits()
    transforms = [aoti.FuseProjections(), recipe] if isinstance(recipe, aoti.Float8Rowwise) else [recipe]
    with aoti.capture(model) as call:
        model(ids, use_cache=False)
    outputs, keys = [], []
    for _ in range(2):
        assert not [f for f in aoti.transform(model, transforms) if "skipped" in f]
        artifact = aoti.compile(model, call, cache=cache)
        assert aoti.apply(artifact, model).runtime == "aoti"
        outputs.append(logits())
        keys.append(artifact.key)
        aoti.restore(model)
        assert aoti.transforms_of(model) == () and aoti.quantization_of(model) == "none"
        assert all(type(p) is torch.nn.Parameter and p.is_floating_point() for p in model.parameters())
        assert torch.equal(logits(), float_out)
    assert keys[0] == keys[1] and torch.equal(outputs[0], outputs[1])
    assert 1e-4 < rel(outputs[0], float_out) < 0.1  # really quantized


def test_fp8_keeps_a_tied_embedding_tied_through_restore():
    """A tied LM head shares its weight with the embedding: FP8 replaces the head and leaves the
    embedding's weight where it is; restore gives the head that very parameter back."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config).eval()
    shared = model.lm_head.weight
    assert shared is model.model.embed_tokens.weight
    aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])
    assert type(model.lm_head).__name__ == "RowwiseFloat8Linear" and model.model.embed_tokens.weight is shared
    aoti.restore(model)
    assert model.lm_head.weight is shared and model.model.embed_tokens.weight is shared


def test_a_transform_applied_with_other_settings_must_be_restored_first():
    model = tiny.MLP()
    aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])
    aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])  # the same: nothing to do
    with pytest.raises(ValueError, match="aoti.restore"):
        aoti.transform(model, [aoti.Float8Rowwise()])


def test_fp8_counts_the_layers_it_quantized_and_says_which_it_left():
    """`_scaled_mm` needs sizes that are multiples of 16: a 20-wide layer stays as it is, and the
    status says so in counts, not "fp8_rowwise" alone."""
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 20))
    fallbacks = aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])
    assert fallbacks == ["Float8Rowwise -> partly: 1 of 2 linear layers left unquantized (sizes not multiples of 16)"]
    assert aoti.record_of(model).notes == ["Float8Rowwise: 1 of 2 linear layers in e4m3"]
    assert type(model[2]) is torch.nn.Linear


def _scaled_mm_without_row_scales(monkeypatch, also_tensor: bool = False):
    """`torch._scaled_mm` as RTX PRO Blackwell runs it in the torch builds of pytorch issue 192707:
    row-wise scales raise cuBLAS's CUBLAS_STATUS_NOT_SUPPORTED, per-tensor scales work (``also_tensor``:
    they fail too). The FP8 self-test results of this process are forgotten first."""
    from aoti.kernels import fp8

    real = torch._scaled_mm

    def scaled_mm(a, b, scale_a, scale_b, *args, **kwargs):
        if scale_a.numel() > 1 or scale_b.numel() > 1 or also_tensor:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul")
        return real(a, b, scale_a, scale_b, *args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", scaled_mm)
    monkeypatch.setattr(fp8, "_SELF_TESTED", {})


def test_where_row_wise_fp8_fails_its_self_test_the_layers_use_one_scale_per_tensor(cache, monkeypatch):
    """The self-test runs before any layer is rewritten; the fallback is recorded with cuBLAS's reason;
    the per-tensor model compiles and matches its eager run and the float model within FP8 error."""
    from aoti.transforms.quantize import RowwiseFloat8Linear

    _scaled_mm_without_row_scales(monkeypatch)
    model, reference = tiny.flux(), tiny.flux()
    fallbacks = aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])
    layers = [m for m in model.modules() if isinstance(m, RowwiseFloat8Linear)]
    assert layers and all(layer.per_tensor for layer in layers)
    assert any("per-row scales -> one per tensor" in f and "CUBLAS_STATUS_NOT_SUPPORTED" in f for f in fallbacks), fallbacks
    inputs = tiny.flux_inputs()
    with aoti.capture(model) as call, torch.no_grad():
        model(**inputs)
    status = aoti.apply(aoti.compile(model, call, cache=cache), model)
    assert status.runtime == "aoti" and any("one per tensor" in f for f in status.fallbacks), status
    torch.manual_seed(3)
    fresh = tiny.flux_inputs()
    with torch.no_grad():
        compiled, eager, exact = (m(**fresh)[0].float() for m in (model, model.forward.eager, reference))
    assert rel(compiled, eager) < 1e-4 and rel(compiled, exact) < 0.1
    aoti.restore(model)


def test_where_every_fp8_layout_fails_its_self_test_the_module_stays_in_its_float_dtype(monkeypatch):
    _scaled_mm_without_row_scales(monkeypatch, also_tensor=True)
    model = tiny.flux()
    fallbacks = aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])
    assert fallbacks == [fallbacks[0]] and fallbacks[0].startswith("Float8Rowwise -> skipped: torch._scaled_mm failed its self-test")
    assert "row-wise scales (RuntimeError: CUDA error: CUBLAS_STATUS_NOT_SUPPORTED" in fallbacks[0]
    assert aoti.quantization_of(model) == "none" and all(p.dtype == torch.float32 for p in model.parameters())

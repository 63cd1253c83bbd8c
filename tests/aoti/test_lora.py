"""LoRA fused into the weights compiled graphs read: a random adapter in diffusers' format, read by
diffusers' `lora_state_dict`, fused into a tiny FLUX transformer (the real class) compiled whole and
regionally; the output equals eager with the same adapter loaded by diffusers' own peft path; unfused,
the weights and the output are the first ones bit for bit; no build is started."""

from __future__ import annotations

import copy

import pytest
import torch

import aoti
from tests import tiny

RANK, ALPHA = 4, 8.0


def _adapter_dir(model: torch.nn.Module, path, seed: int = 0, alpha: float = ALPHA,
                 kinds: tuple[str, ...] = ("to_q", "to_k", "to_v", "add_q_proj", "proj_out")) -> str:
    """A random rank-4 adapter on every linear layer named one of ``kinds`` (attention projections),
    saved by diffusers (with its peft config)."""
    from diffusers import FluxPipeline

    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in kinds:
            layers[f"{name}.lora_A.weight"] = torch.randn(RANK, module.in_features, generator=generator) * 0.3
            layers[f"{name}.lora_B.weight"] = torch.randn(module.out_features, RANK, generator=generator) * 0.3
    targets = sorted({k.rsplit(".lora_", 1)[0] for k in layers})
    FluxPipeline.save_lora_weights(str(path), transformer_lora_layers=layers, transformer_lora_adapter_metadata={
        "r": RANK, "lora_alpha": alpha, "target_modules": targets, "lora_dropout": 0.0, "bias": "none"})
    return str(path / "pytorch_lora_weights.safetensors")


def _adapter(path) -> aoti.LoraAdapter:
    from diffusers import FluxPipeline

    return aoti.LoraAdapter.from_diffusers(FluxPipeline, path, name="random")


def _with_diffusers_lora(model: torch.nn.Module, path, scale: float) -> torch.nn.Module:
    """The reference: a copy of the model with the adapter loaded as `FluxPipeline.load_lora_weights` loads
    it into its transformer (peft layers beside the weights, not fused), at ``scale``."""
    from diffusers import FluxPipeline

    reference = copy.deepcopy(model)
    state_dict, alphas, metadata = FluxPipeline.lora_state_dict(path, return_alphas=True, return_lora_metadata=True)
    FluxPipeline.load_lora_into_transformer(state_dict, alphas, reference, adapter_name="ref", metadata=metadata)
    reference.set_adapters(["ref"], weights=[scale])
    return reference


def _run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)[0]


@pytest.mark.parametrize("regional", [False, True], ids=["whole", "regional"])
def test_a_fused_adapter_runs_in_the_compiled_graphs_and_unfuses_bit_for_bit(cache, tmp_path, regional):
    model, inputs = tiny.flux(num_layers=2, num_single_layers=2), tiny.flux_inputs()
    path = _adapter_dir(model, tmp_path / "lora")
    plain_eager = _run(model, inputs)
    expected = _run(_with_diffusers_lora(model, path, 0.7), inputs)
    assert not torch.allclose(expected, plain_eager, atol=1e-3)  # the adapter changes the output
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with aoti.capture(model) as call, torch.no_grad():
        model(**inputs)
    artifact = aoti.compile(model, call, aoti.CompileOptions(regional=regional), cache=cache)
    aoti.apply(artifact, model)
    status = aoti.status_of(model)
    plain_compiled = _run(model, inputs)

    adapter = _adapter(path)
    fused = aoti.fuse_lora(model, adapter, scale=0.7)
    assert aoti.lora_of(model).name == "random" and set(fused.layers) == set(adapter.layers) and len(adapter.layers) == 17
    calls = status.compiled_calls
    torch.testing.assert_close(_run(model, inputs), expected, rtol=1e-4, atol=1e-4)
    assert status.compiled_calls > calls and status.guard_fallbacks == 0  # the compiled graphs ran it

    assert aoti.unfuse_lora(model) == "random" and aoti.lora_of(model) is None
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(_run(model, inputs), plain_compiled)
    assert aoti.status_of(model) is status  # nothing rebuilt or rebound
    aoti.restore(model)


def test_switching_adapters_unfuses_the_first_and_scales_follow_peft(tmp_path):
    model, inputs = tiny.flux(num_layers=1, num_single_layers=1), tiny.flux_inputs()
    first = _adapter_dir(model, tmp_path / "a", seed=1)
    second = _adapter_dir(model, tmp_path / "b", seed=2, alpha=2.0, kinds=("to_q", "proj_out"))  # fewer layers
    aoti.fuse_lora(model, _adapter(first), scale=1.0)
    aoti.fuse_lora(model, _adapter(second), scale=0.5)  # the first is taken out: where the second is not, too
    torch.testing.assert_close(_run(model, inputs), _run(_with_diffusers_lora_fresh(second, 0.5), inputs), rtol=1e-4, atol=1e-4)
    aoti.unfuse_lora(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny.flux(num_layers=1, num_single_layers=1).state_dict().values()))


def _with_diffusers_lora_fresh(path, scale: float) -> torch.nn.Module:
    return _with_diffusers_lora(tiny.flux(num_layers=1, num_single_layers=1), path, scale)


def test_an_adapter_that_does_not_fit_is_refused_and_changes_nothing(tmp_path):
    model = tiny.flux(num_layers=2, num_single_layers=2)
    adapter = _adapter(_adapter_dir(model, tmp_path / "lora"))
    smaller = tiny.flux(num_layers=1, num_single_layers=1)
    before = {k: v.clone() for k, v in smaller.state_dict().items()}
    with pytest.raises(ValueError, match=r"has no layer (single_)?transformer_blocks\.1\."):
        aoti.fuse_lora(smaller, adapter)
    other_width = tiny.flux(num_layers=2, num_single_layers=2, head_dim=8)
    with pytest.raises(ValueError, match="the adapter's product is"):
        aoti.fuse_lora(other_width, adapter)
    assert all(torch.equal(v, before[k]) for k, v in smaller.state_dict().items()) and aoti.lora_of(smaller) is None
    with pytest.raises(ValueError, match="not a LoRA matrix this library fuses"):
        aoti.LoraAdapter.from_state_dict("dora", {"transformer.x.lora_magnitude_vector": torch.ones(3)})


def test_an_adapter_fused_into_fp8_layers_is_quantized_again_from_the_float_weights(cache, tmp_path):
    """FP8 weights (`Float8Rowwise`, torch's own `_scaled_mm` on the CPU): the adapted layers are quantized
    again from their float weights plus the adapter's product, as FP8 of the float model with the adapter
    would be, bit for bit; the compiled graphs compute with them; unfused, the first bits and scales."""
    from aoti.transforms.quantize import RowwiseFloat8Linear

    model, inputs = tiny.flux(), tiny.flux_inputs()
    adapter = _adapter(_adapter_dir(model, tmp_path / "lora"))
    reference = copy.deepcopy(model)
    aoti.fuse_lora(reference, adapter, scale=0.7)  # the float model with the adapter, then FP8
    aoti.transform(reference, [aoti.Float8Rowwise(emulate=True)])
    aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])
    adapted_fp8 = [layer for layer in adapter.layers if isinstance(model.get_submodule(layer), RowwiseFloat8Linear)]
    assert len(adapted_fp8) >= 4  # (layers whose sizes are not multiples of 16 stay float at these tiny sizes)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with aoti.capture(model) as call, torch.no_grad():
        model(**inputs)
    status = aoti.apply(aoti.compile(model, call, aoti.CompileOptions(), cache=cache), model)
    assert status.runtime == "aoti" and status.quantization == "fp8_rowwise", status
    plain = _run(model, inputs)

    aoti.fuse_lora(model, adapter, scale=0.7)
    for layer in adapted_fp8:
        ours, theirs = model.get_submodule(layer), reference.get_submodule(layer)
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.weight_scale, theirs.weight_scale), layer
    calls = status.compiled_calls
    with_adapter = _run(model, inputs)
    assert status.compiled_calls > calls and status.guard_fallbacks == 0
    torch.testing.assert_close(with_adapter, _run(reference, inputs), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(with_adapter, plain, atol=1e-3)

    aoti.unfuse_lora(model)
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
    assert torch.equal(_run(model, inputs), plain)
    aoti.restore(model)


def test_a_peft_adapter_of_a_text_model_fuses_into_its_fused_projections(tmp_path):
    """A transformers causal LM whose q/k/v and gate/up projections are fused (`FuseProjections`) and a
    peft adapter on every projection, saved by peft: read by `LoraAdapter.from_peft`, each projection's
    product lands in its own rows of the fused weight; the logits are peft's own (adapter unmerged);
    unfused, the weights and logits are the first ones bit for bit."""
    from peft import LoraConfig, get_peft_model

    model, ids = tiny.llama(), tiny.token_ids(12)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    reference = get_peft_model(copy.deepcopy(model), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets,
                                                                init_lora_weights=False))
    reference.save_pretrained(str(tmp_path / "adapter"))
    with torch.no_grad():
        expected = reference(ids).logits
    aoti.transform(model, [aoti.FuseProjections()])
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(ids).logits

    adapter = aoti.LoraAdapter.from_peft(tmp_path / "adapter")
    assert len(adapter.layers) == 2 * len(targets) and "model.layers.0.self_attn.q_proj" in adapter.layers
    fused = aoti.fuse_lora(model, adapter, scale=1.0)
    assert "model.layers.0.self_attn.qkv_proj" in fused.layers and "model.layers.1.mlp.gate_up_proj" in fused.layers
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(expected, plain, atol=1e-3)

    aoti.unfuse_lora(model)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)

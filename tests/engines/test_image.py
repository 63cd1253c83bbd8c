import numpy as np
import pytest

import aoti
from engines.image import STAGES, ImageModel, ImageParams

PARAMS = ImageParams(height=32, width=32, steps=12, seed=3)


@pytest.fixture(scope="module")
def image_model(engine, image_spec):
    model = engine.load(image_spec)
    assert isinstance(model, ImageModel)
    return model


def _red_fraction(image, rows: slice, cols: slice) -> float:
    pixels = np.asarray(image, dtype=np.int32)[rows, cols]
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 110) & (pixels[..., 2] < 110)
    return float(red.mean())


def test_embedded_image_model_draws_what_the_prompt_names(image_model):
    image_model.restore()
    result = image_model.generate("a red circle, top left", PARAMS)
    assert result.image.size == (32, 32) and len(result.step_ms) == PARAMS.steps
    pixels = np.asarray(result.image)
    assert pixels.std() > 10  # not constant
    assert _red_fraction(result.image, slice(0, 16), slice(0, 16)) > 3 * _red_fraction(result.image, slice(16, 32), slice(16, 32))


def test_aoti_image_matches_eager_for_a_fixed_seed(engine, image_model, image_spec):
    image_model.restore()
    eager = np.asarray(image_model.generate("a blue square, bottom right", PARAMS).image, dtype=np.int32)
    state = engine.optimize(image_spec.id, background=False)
    assert state.phase == "aoti", state.reason
    compiled = np.asarray(image_model.generate("a blue square, bottom right", PARAMS).image, dtype=np.int32)
    assert np.abs(compiled - eager).max() <= 2  # float32 rounding through 12 DDIM steps, in 0..255 units
    assert aoti.status_of(image_model.denoiser).compiled_calls >= PARAMS.steps


@pytest.mark.parametrize(("prompt", "params", "message"), [
    ("", PARAMS, "empty"),
    ("a purple hexagon", PARAMS, "colour"),
    ("a red circle", ImageParams(64, 64, 10), "not offered"),
    ("a red circle", ImageParams(32, 32, 0), "steps"),
])
def test_bad_inputs_raise_clear_errors(image_model, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        image_model.generate(prompt, params)


def test_the_embedded_vocabulary_is_checked_without_loading_the_model():
    """A prompt the shapes model can't draw is refused by the spec alone (at the door, before a switch
    loads the model); one it can passes."""
    from engines import registry
    from engines.image import ImageParams, check_image_request

    spec = registry.get("tiny-shapes-unet")
    with pytest.raises(ValueError, match="names no colour"):
        check_image_request(spec, "a violet square", ImageParams(32, 32, 4))
    check_image_request(spec, "A Blue Triangle, bottom right", ImageParams(32, 32, 4))


def test_an_images_time_is_told_by_stage(flux_spec):
    """A FLUX pipeline's request: text encoding (CLIP and T5), each denoising step from the
    transformer's first call, and the VAE decode, timed on the pipeline's own modules."""
    model = ImageModel(flux_spec)
    result = model.generate("a red circle", ImageParams(height=32, width=32, steps=3, seed=1))
    assert list(result.stages_s) == list(STAGES) and all(v > 0 for v in result.stages_s.values())
    assert len(result.step_ms) == 3
    assert result.stages_s["denoising"] == pytest.approx(sum(result.step_ms) / 1e3, abs=1e-3)
    assert sum(result.stages_s.values()) <= result.latency_s
    assert not model.pipe.text_encoder._forward_pre_hooks and not model.denoiser._forward_pre_hooks  # the clock leaves no hooks


def test_text_encoders_in_host_memory_give_the_same_image(flux_spec):
    """The placement `select.choose` picks where a pipeline does not fit with its text encoders: they
    stay in host memory and run on a copy moved in for each call (on the CPU the move is a no-op, so
    this checks the mechanism: same image, weights back on their host tensors, the placement said)."""
    params = ImageParams(height=32, width=32, steps=3, seed=5)
    plain = ImageModel(flux_spec)
    offloaded = ImageModel(flux_spec, offload_encoders=True)
    weights = {name: p.data_ptr() for name, p in offloaded.pipe.text_encoder_2.named_parameters()}
    a, b = (np.asarray(m.generate("a blue square", params).image) for m in (plain, offloaded))
    assert np.array_equal(a, b)
    assert {name: p.data_ptr() for name, p in offloaded.pipe.text_encoder_2.named_parameters()} == weights
    assert list(offloaded.in_host) == ["text_encoder", "text_encoder_2"] and plain.placement == ""
    assert "text_encoder, text_encoder_2 in host memory" in offloaded.placement

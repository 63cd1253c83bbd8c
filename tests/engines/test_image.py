import numpy as np
import pytest

import aoti
from engines.image import ImageModel, ImageParams

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
    assert state.state == "aoti", state.reason
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

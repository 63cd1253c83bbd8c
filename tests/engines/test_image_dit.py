"""The embedded transformer (`tiny-shapes-dit`, a trained FLUX transformer): it draws what the prompt
names, compiles regionally by default, and step caching skips its compiled blocks while the image
still shows the prompt; "off" is the uncached image exactly."""

import numpy as np
import pytest

import aoti
from engines import registry
from engines.image import ImageModel, ImageParams, check_image_request
from engines.pipelines.shapes import draws, outlined
from engines.recipes import default_switches, recipe_for

PROMPTS = ("a red circle, top left", "a blue square, bottom right", "a yellow triangle, center")
# (seed, prompt) the outline adapter draws as outlines (41 of the 60 labels pass `outlined`; squares nearly all)
STYLED = ((1, "a blue square, bottom right"), (1, "a green circle, bottom left"), (0, "a blue square, center"))


def _pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def dit(engine):
    """The DiT, eager images of `PROMPTS` first, then compiled with its default (regional) recipe."""
    spec = registry.get("tiny-shapes-dit")
    model = engine.load(spec)
    assert isinstance(model, ImageModel)
    eager = {p: model.generate(p, ImageParams(32, 32, steps=20, seed=i)) for i, p in enumerate(PROMPTS)}
    status = model.optimize(recipe_for(spec, engine.device, default_switches(spec)), engine.cache)
    assert status.runtime == "aoti" and status.reason.startswith("regional"), status
    return model, eager


def test_the_dit_draws_what_the_prompt_names_eager_and_compiled_alike(dit):
    model, eager = dit
    for i, prompt in enumerate(PROMPTS):
        compiled = model.generate(prompt, ImageParams(32, 32, steps=20, seed=i))
        assert draws(eager[prompt].image, prompt) and draws(compiled.image, prompt), prompt
        assert np.abs(_pixels(compiled) - _pixels(eager[prompt])).max() <= 2  # float32 rounding, in 0..255 units
    assert aoti.status_of(model.denoiser).guard_fallbacks == 0


def test_step_caching_skips_the_compiled_blocks_and_the_image_still_shows_the_prompt(dit):
    model, _ = dit
    status = aoti.status_of(model.denoiser)
    blocks = len(model.denoiser.transformer_blocks) + len(model.denoiser.single_transformer_blocks)
    for i, prompt in enumerate(PROMPTS):
        params = ImageParams(32, 32, steps=20, seed=i)
        off = model.generate(prompt, params)
        again = model.generate(prompt, params)
        assert off.cached_steps == [] and np.array_equal(_pixels(off), _pixels(again))  # "off" is the uncached image
        calls = status.compiled_calls
        fast = model.generate(prompt, ImageParams(32, 32, steps=20, seed=i, step_cache="fast"))
        cached = len(fast.cached_steps)
        assert cached >= 3, fast.cached_steps  # it does skip
        assert status.compiled_calls - calls == (20 - cached) * blocks + cached  # a cached step runs the first block only
        assert draws(fast.image, prompt) and _psnr(_pixels(fast), _pixels(off)) > 24, prompt  # broken reuse: ~10-15 dB
        faster = model.generate(prompt, ImageParams(32, 32, steps=20, seed=i, step_cache="faster"))
        assert len(faster.cached_steps) >= cached and draws(faster.image, prompt)


def test_the_outline_adapter_switches_per_request_on_the_compiled_model_with_no_rebuild(dit):
    model, _ = dit
    status, ref = aoti.status_of(model.denoiser), model.ref
    for i, prompt in STYLED:
        params = ImageParams(32, 32, steps=20, seed=i)
        plain = model.generate(prompt, params)
        styled = model.generate(prompt, ImageParams(32, 32, steps=20, seed=i, lora="outline"))
        assert styled.lora_switch_s > 0 and outlined(styled.image, prompt) and draws(styled.image, prompt), prompt
        assert not outlined(plain.image, prompt)
        again = model.generate(prompt, ImageParams(32, 32, steps=20, seed=i, lora="outline"))
        assert again.lora_switch_s == 0 and np.array_equal(_pixels(again), _pixels(styled))  # fused already
        back = model.generate(prompt, params)
        assert back.lora_switch_s > 0 and np.array_equal(_pixels(back), _pixels(plain))  # unfused bit for bit
    assert aoti.status_of(model.denoiser) is status and model.ref == ref and status.guard_fallbacks == 0  # no rebuild
    with pytest.raises(ValueError, match="`lora` 'sparkles' is not offered for tiny-shapes-dit \\(offered: outline\\)"):
        model.generate("a red circle", ImageParams(32, 32, 4, lora="sparkles"))


def test_step_caching_is_refused_where_it_cannot_run(dit):
    model, _ = dit
    with pytest.raises(ValueError, match=r"step caching \(`step_cache`\) is not offered for tiny-shapes-unet"):  # at the door, by its spec
        check_image_request(registry.get("tiny-shapes-unet"), "a red circle", ImageParams(32, 32, 4, step_cache="fast"))
    with pytest.raises(ValueError, match="`step_cache` must be one of off, fast, faster"):
        model.generate("a red circle", ImageParams(32, 32, 4, step_cache="fastest"))

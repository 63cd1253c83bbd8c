"""CUDA-graph replay of a compiled package against the same package launched kernel by kernel: the
embedded image model, its denoiser call by call and its whole image.

Measured on the H200 (2026-12-05): replay equals the plain launches bit for bit, every call and the whole
image. Both differ from eager by the bf16 compile's rounding (0.3 % a call), which 20 DDIM steps carry
to at most 36/255 in a pixel: the 56/255 once blamed on replay was that drift, measured on another card
against another build."""

from __future__ import annotations

import numpy as np
import torch

import aoti
from engines import registry
from engines.image import ImageModel, ImageParams
from tests.gpu.conftest import rel

PROMPT = "a red circle, top left"
PARAMS = ImageParams(32, 32, steps=20, seed=0)


def _generate(model: ImageModel) -> tuple[np.ndarray, list[torch.Tensor], list[tuple]]:
    """The image, and every denoiser call's inputs and output."""
    outputs, inputs = [], []
    pre = model.denoiser.register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append(([a.clone() if torch.is_tensor(a) else a for a in args],
                                               {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})),
        with_kwargs=True)
    post = model.denoiser.register_forward_hook(lambda m, args, out: outputs.append(out[0].clone()))
    try:
        image = np.asarray(model.generate(PROMPT, PARAMS).image, dtype=int)
    finally:
        pre.remove()
        post.remove()
    return image, outputs, inputs


def test_replay_gives_what_the_package_gives_without_it(cache):
    model = ImageModel(registry.get("tiny-shapes-unet"), "cuda")
    eager_image, eager_steps, calls = _generate(model)

    assert model.optimize(cache=cache, cuda_graphs=False).cuda_graphs == 0
    plain_image, plain_steps, _ = _generate(model)
    with torch.no_grad():  # the denoiser on eager's inputs, one call at a time
        plain_calls = [model.denoiser(*a, **k)[0].clone() for a, k in calls]

    model.restore()
    status = model.optimize(cache=cache, cuda_graphs=True)
    assert status.cuda_graphs == 1 and status.cache_hit, status
    replay_image, replay_steps, _ = _generate(model)
    with torch.no_grad():
        replay_calls = [model.denoiser(*a, **k)[0].clone() for a, k in calls]
    assert aoti.status_of(model.denoiser).cuda_graphs == 1  # the capture held: it replayed

    report = {
        "call_rel_plain_vs_eager": [round(rel(p, e), 5) for p, e in zip(plain_calls, eager_steps)],
        "call_rel_replay_vs_plain": [round(rel(r, p), 5) for r, p in zip(replay_calls, plain_calls)],
        "step_rel_replay_vs_plain": [round(rel(r, p), 5) for r, p in zip(replay_steps, plain_steps)],
        "image_max_plain_vs_eager": int(np.abs(plain_image - eager_image).max()),
        "image_max_replay_vs_plain": int(np.abs(replay_image - plain_image).max()),
        "image_max_replay_vs_eager": int(np.abs(replay_image - eager_image).max()),
    }
    print(report)
    # The same kernels on the same inputs: the same numbers, call by call and for the whole image.
    assert all(torch.equal(r, p) for r, p in zip(replay_calls, plain_calls)), report
    assert report["image_max_replay_vs_plain"] == 0, report



def test_a_regional_step_replayed_as_one_graph_gives_the_blocks_launches_results(cache):
    """The embedded DiT, regional: the whole step (every block's graph and the eager work between them)
    captured as one CUDA graph gives the image the blocks' graphs give launched one by one, bit for bit;
    step caching lifts the graph (a replay can skip nothing) and still skips blocks."""
    from engines.recipes import image_recipe

    model = ImageModel(registry.get("tiny-shapes-dit"), "cuda")
    recipe = image_recipe(regional=True)
    assert model.optimize(recipe, cache, cuda_graphs=False).cuda_graphs == 0
    plain_image, plain_steps, calls = _generate(model)
    cached_plain = model.generate(PROMPT, PARAMS, step_cache=aoti.StepCacheConfig(threshold=0.2))

    model.restore()
    status = model.optimize(recipe, cache, cuda_graphs=True)
    assert status.cache_hit and not [f for f in status.fallbacks if "cuda graph" in f], status.fallbacks
    replay_image, replay_steps, _ = _generate(model)
    live = aoti.status_of(model.denoiser)
    assert live.cuda_graphs == 1, live  # one signature (32x32), captured once and replayed every step
    assert np.array_equal(replay_image, plain_image)
    assert all(torch.equal(r, p) for r, p in zip(replay_steps, plain_steps))
    with torch.no_grad():  # a later call with other tensors: copied into the captured ones, not stale
        a, k = calls[-1]
        assert torch.equal(model.denoiser(*a, **k)[0], plain_steps[-1])

    cached = model.generate(PROMPT, PARAMS, step_cache=aoti.StepCacheConfig(threshold=0.2))
    assert cached.cached_steps and cached.cached_steps == cached_plain.cached_steps
    assert np.array_equal(np.asarray(cached.image), np.asarray(cached_plain.image))
    assert isinstance(model.denoiser.__dict__.get("forward"), aoti.StepGraph)  # back after the cached run

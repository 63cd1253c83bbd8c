"""Step caching (First-Block Cache) on a tiny FLUX transformer of the real class: a cached step calls
the first block only, adds the residual the others added at the last full step, and leaves nothing
behind; with no step cached the outputs are the uncached ones bit for bit."""

import pytest
import torch

import aoti
from tests import tiny


def _block_calls(model) -> list[int]:
    calls = []
    for block in [*model.transformer_blocks, *model.single_transformer_blocks]:
        block.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    return calls


def _steps(model, inputs: dict, n: int) -> list[torch.Tensor]:
    """``n`` denoising-like calls: the hidden states move a little each step, as in a sampler."""
    outputs, hidden = [], inputs["hidden_states"]
    with torch.no_grad():
        for _ in range(n):
            out = model(**{**inputs, "hidden_states": hidden})[0]
            outputs.append(out)
            hidden = hidden - 0.05 * out
    return outputs


def test_a_step_that_caches_nothing_is_the_uncached_step_bit_for_bit():
    model, inputs = tiny.flux(num_layers=2, num_single_layers=2), tiny.flux_inputs()
    plain = _steps(model, inputs, 4)
    with aoti.step_cache(model, aoti.StepCacheConfig(threshold=0.0)) as stats:
        under = _steps(model, inputs, 4)
    assert stats.cached == [False] * 4 and stats.blocks_skipped == 0 and stats.blocks_run == 16
    assert all(torch.equal(a, b) for a, b in zip(plain, under))
    assert type(model.transformer_blocks) is torch.nn.ModuleList and not model._forward_pre_hooks  # nothing left behind


def test_a_cached_step_calls_the_first_block_only_and_reproduces_an_unchanged_step():
    model, inputs = tiny.flux(num_layers=2, num_single_layers=2), tiny.flux_inputs()
    calls = _block_calls(model)
    with torch.no_grad():
        full = model(**inputs)[0]
        with aoti.step_cache(model, aoti.StepCacheConfig(schedule=(False, True, True))) as stats:
            outputs = [model(**inputs)[0] for _ in range(3)]
    assert stats.cached == [False, True, True] and stats.changes[1] == 0.0
    assert len(calls) == 4 + 4 + 1 + 1  # the plain call, the full step, then the first block alone twice
    assert stats.blocks_skipped == 2 * 3
    for out in outputs:  # same inputs: the first block's output plus the kept residual is the full output
        torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-5)


def test_the_threshold_decides_from_the_first_blocks_residual_change():
    model, inputs = tiny.flux(num_layers=2, num_single_layers=2), tiny.flux_inputs()
    with aoti.step_cache(model, aoti.StepCacheConfig(threshold=1e9, warmup_steps=2, max_in_a_row=2)) as loose:
        _steps(model, inputs, 8)
    # warm-up steps, then at most two cached in a row, each run of them followed by a full step
    assert loose.cached == [False, False, True, True, False, True, True, False]
    assert loose.changes[0] is None and all(c is not None and c >= 0 for c in loose.changes[1:])
    with aoti.step_cache(model, aoti.StepCacheConfig(threshold=0.0)) as strict:
        _steps(model, inputs, 8)
    assert strict.cached_steps == []


def test_a_regional_build_skips_the_compiled_graphs_of_the_other_blocks(cache):
    model, inputs = tiny.flux(num_layers=2, num_single_layers=2), tiny.flux_inputs()
    with torch.no_grad():
        eager = _steps(model, inputs, 4)
        with aoti.step_cache(model, aoti.StepCacheConfig(schedule=(False, True, False, True))):
            eager_cached = _steps(model, inputs, 4)
    with aoti.capture(model) as call, torch.no_grad():
        model(**inputs)
    aoti.apply(aoti.compile(model, call, aoti.CompileOptions(regional=True), cache=cache), model)
    status = aoti.status_of(model)
    before = status.compiled_calls
    with aoti.step_cache(model, aoti.StepCacheConfig(schedule=(False, True, False, True))) as stats:
        compiled_cached = _steps(model, inputs, 4)
    assert stats.cached == [False, True, False, True]
    assert status.compiled_calls - before == 4 + 1 + 4 + 1 and status.guard_fallbacks == 0  # no graph run for a skipped block
    for a, b in zip(compiled_cached, eager_cached):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(eager_cached, eager))  # caching did change something
    aoti.restore(model)


def test_where_it_cannot_run_it_says_why(flux_compiled):
    with pytest.raises(ValueError, match="step caching is not offered for UNet2DConditionModel: its repeated blocks"):
        with aoti.step_cache(tiny.unet()):
            pass
    model, _ = flux_compiled  # one graph for the whole transformer
    with pytest.raises(ValueError, match="compiled as one graph.*compile it regionally"):
        with aoti.step_cache(model):
            pass


def test_a_step_graph_is_lifted_for_caching_and_a_step_it_cannot_capture_runs_launch_by_launch():
    """`aoti.StepGraph` as a regional build installs it on a GPU, here on the CPU where no capture can
    succeed: the step runs launch by launch, said once in the status; autograd on is said apart;
    `step_cache` and `eager` lift it for their block and put it back; `restore` takes it away."""
    model, inputs = tiny.flux(num_layers=2, num_single_layers=2), tiny.flux_inputs()
    plain = _steps(model, inputs, 2)
    status = aoti.Status(runtime="aoti")
    graph = aoti.StepGraph(model.forward, status)
    model.forward = graph
    assert all(torch.equal(a, b) for a, b in zip(_steps(model, inputs, 2), plain))
    failed = [f for f in status.fallbacks if f.startswith("cuda graph of the step -> off: capture failed")]
    assert len(failed) == 1 and status.cuda_graphs == 0  # said once for the two steps
    with torch.enable_grad():
        model(**inputs)
    assert "cuda graph of the step -> off: autograd is on (a step is captured for inference only)" in status.fallbacks

    calls = _block_calls(model)
    with aoti.step_cache(model, aoti.StepCacheConfig(schedule=(False, True))) as stats:
        assert "forward" not in model.__dict__  # the blocks run one by one, so that they can be skipped
        _steps(model, inputs, 2)
    assert stats.cached == [False, True] and len(calls) == 4 + 1 and model.__dict__["forward"] is graph
    with aoti.eager(model):
        assert "forward" not in model.__dict__
    assert model.__dict__["forward"] is graph
    aoti.restore(model)
    assert "forward" not in model.__dict__

import threading
import time

import pytest
import torch

from engines.state import Progress
from engines.text import SamplingParams


def test_unload_frees_memory_and_switching_back_uses_the_cache(engine, text_spec):
    engine.optimize(text_spec.id, background=False)  # compiled (or already cached) once
    size_mb = engine.models[text_spec.id].nbytes / 2**20
    freed = engine.unload(text_spec.id)
    assert text_spec.id not in engine.models
    assert freed == pytest.approx(size_mb) and freed > 7  # 2M fp32 weights + KV cache, all released
    assert "freed" in engine.states[text_spec.id].reason
    state = engine.optimize(text_spec.id, background=False)  # reload: artifacts come from the cache
    assert state.phase == "aoti" and state.build.cache_hit is True and state.build.compile_s is None
    text = list(engine.generate_text(text_spec.id, "The socket module", SamplingParams(max_new_tokens=5, temperature=0)))
    assert text and engine.states[text_spec.id].guard.guard_fallbacks == 0


def test_background_compile_serves_eagerly_meanwhile(engine, image_spec):
    from engines.image import ImageParams

    engine.unload(image_spec.id)
    state = engine.optimize(image_spec.id, background=True)
    assert state.phase == "compiling" and state.progress.stage and state.progress.started is not None  # the panel shows the stage and time
    result = engine.generate_image(image_spec.id, "a green triangle, center", ImageParams(32, 32, 4))
    assert result.image.size == (32, 32)
    done = engine.wait(image_spec.id, timeout=600)
    assert done.phase == "aoti" and done.progress == Progress()


def test_loads_and_compiles_take_turns_and_loaded_models_keep_serving(engine, text_spec, image_spec):
    """Loaders patch process-wide torch state that a concurrent export traces through (an export beside
    diffusers' loader got meta parameters), so a model is built only while no compile runs, and a
    compile waits for a load; a model already loaded is served meanwhile."""
    from engines.image import ImageParams
    from engines.lightweight import TORCH_STATE

    engine.load(text_spec)
    engine.unload(image_spec.id)
    loaded = threading.Event()
    with TORCH_STATE:  # held the way a running compile holds it
        threading.Thread(target=lambda: (engine.load(image_spec), loaded.set()), daemon=True).start()
        assert not loaded.wait(1.0) and image_spec.id not in engine.models
        assert list(engine.generate_text(text_spec.id, "The file", SamplingParams(max_new_tokens=3, temperature=0)))
    assert loaded.wait(120) and image_spec.id in engine.models
    with TORCH_STATE:  # held the way a running load holds it
        state = engine.optimize(image_spec.id, background=True)
        time.sleep(1.0)
        assert state.phase == "compiling"
    assert engine.wait(image_spec.id, timeout=600).phase == "aoti"
    assert engine.generate_image(image_spec.id, "a red square, center", ImageParams(32, 32, 2)).image.size == (32, 32)


def test_wrong_task_is_refused(engine, text_spec):
    with pytest.raises(AssertionError, match="not an image model"):
        from engines.image import ImageParams

        engine.generate_image(text_spec.id, "x", ImageParams(32, 32, 4))


def test_quantization_on_off_on_needs_no_reload_and_gives_the_float_outputs_back(engine, text_spec, monkeypatch):
    """Quantization is a transform the engine undoes: on, off (AOTI off: the float model) and on again
    on one loaded model, off gives the float outputs and weights back bit for bit, and the quantized
    graphs come from the cache the second time."""
    import aoti
    from engines.recipes import Recipe

    int8_recipe = Recipe((aoti.Int8WeightOnly(),), aoti.CompileOptions(dispatch="dynamic", strict=True))  # the CPU's quantization
    model = engine.load(text_spec)
    monkeypatch.setattr(model, "draft", None)  # the model's own weights are the subject: no draft builds
    ids = torch.tensor([[5, 9, 2, 7]])

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return model.decoder(input_ids=ids, cache_position=torch.arange(4)).clone()

    engine.set_eager(text_spec.id)
    weights = {n: t.clone() for n, t in model.hot_module.state_dict().items()}
    float_out = logits()
    quantized = []
    for round_ in range(2):
        state = engine.optimize(text_spec.id, int8_recipe, background=False)
        assert state.phase == "aoti", state.reason
        assert engine.models[text_spec.id] is model and state.build.quantization == "int8_weight_only"  # no reload
        assert state.build.cache_hit or round_ == 0
        quantized.append(logits())
        assert engine.set_eager(text_spec.id).phase == "eager"
        assert torch.equal(logits(), float_out)
        assert all(torch.equal(t, weights[n]) for n, t in model.hot_module.state_dict().items())
    assert torch.equal(quantized[0], quantized[1]) and not torch.equal(quantized[0], float_out)



def test_a_model_switched_out_mid_stream_finishes_the_request_first(engine, text_spec):
    """The rule: unloading a model (another model of its task loaded, `/set_optimization`'s reloads)
    waits for the request it is serving; the stream finishes as it began, on the same weights."""
    import threading
    import time

    params = SamplingParams(max_new_tokens=12, temperature=0)
    reference = list(engine.generate_text(text_spec.id, "If the file", params))[-1].text
    stream = engine.generate_text(text_spec.id, "If the file", params)
    next(stream)  # the request holds the model now
    unloaded = threading.Event()
    switch = threading.Thread(target=lambda: (engine.unload(text_spec.id), unloaded.set()))
    switch.start()
    time.sleep(0.5)
    assert not unloaded.is_set() and engine.rows()  # waiting for the stream; the panel still reads
    rest = list(stream)
    switch.join(30)
    assert unloaded.is_set() and rest[-1].text == reference
    assert engine.states[text_spec.id].phase == "not loaded"


def test_a_model_switched_back_in_gets_its_compiled_graphs_again(engine, text_spec, image_spec):
    """Unloaded by a switch, loaded again by a request: it runs its graphs again (from the cache, in
    the background) without anyone asking; a model whose AOTI was switched off stays eager."""
    engine.optimize(text_spec.id, background=False)
    engine.unload(text_spec.id)
    list(engine.generate_text(text_spec.id, "If the file", SamplingParams(max_new_tokens=3, temperature=0)))
    state = engine.wait(text_spec.id, timeout=120)
    assert state.phase == "aoti" and state.build.cache_hit is True, state
    engine.set_eager(text_spec.id)
    engine.unload(text_spec.id)
    list(engine.generate_text(text_spec.id, "If the file", SamplingParams(max_new_tokens=3, temperature=0)))
    assert engine.wait(text_spec.id, timeout=5).phase == "eager" and text_spec.id not in engine.recipes
    engine.optimize(text_spec.id, background=False)  # as the session found it


def test_on_zerogpu_a_model_switched_back_in_is_bound_by_the_workers_again(cache, text_spec):
    """With requests in GPU workers (ZeroGPU), this process never rebinds: a model loaded back after a
    switch keeps its compiled artifact's reference, so the next request's workers bind it from the cache
    (it served eager, silently, before); one whose AOTI was switched off stays eager."""
    from engines.device import discover
    from engines.lightweight import LightweightEngine

    workers = LightweightEngine(discover(), cache, observe_locally=False)
    ref = workers.optimize(text_spec.id, background=False).ref
    assert ref is not None
    workers.unload(text_spec.id)
    workers.load(text_spec)
    state = workers.states[text_spec.id]
    assert (state.phase, state.ref) == ("aoti", ref) and "as before it was switched out" in state.reason
    workers.set_eager(text_spec.id)
    workers.unload(text_spec.id)
    workers.load(text_spec)
    assert (workers.states[text_spec.id].phase, workers.states[text_spec.id].ref) == ("eager", None)
    workers.unload(text_spec.id)


@pytest.mark.skipif(__import__("shutil").which("gcc") is None, reason="needs gcc to build the crashing library")
def test_a_package_that_crashes_when_loaded_leaves_the_engine_serving_eager(engine, text_spec, cache, tmp_path):
    """The text model's package, rebuilt to segfault when loaded, in a cache of its own (with its draft's,
    sound: nothing is built): an engine on that cache finds it (a cache hit), the probe child dies of
    SIGSEGV, and the engine serves eager with the crash as its reason; this process lives on."""
    import aoti
    from engines.device import discover
    from engines.lightweight import LightweightEngine
    from tests.crash import crashing_copy

    state = engine.optimize(text_spec.id, background=False)
    assert state.phase == "aoti" and state.ref is not None
    crashing = crashing_copy(aoti.load(engine.models[text_spec.id].hot_module, state.ref, cache=cache), tmp_path,
                             sound=(state.ref["draft"]["key"],))
    other = LightweightEngine(discover(), crashing.cache)
    try:
        state = other.optimize(text_spec.id, background=False)
        assert state.phase == "fallback" and "crashed" in state.reason and "SIGSEGV" in state.reason, state
        assert state.build.cache_hit is True  # it found the package; nothing was rebuilt
        text = list(other.generate_text(text_spec.id, "The file", SamplingParams(max_new_tokens=4, temperature=0)))
        assert text and other.runtime_of(text_spec.id) == "eager"
    finally:
        other.unload(text_spec.id)

"""A model switch builds the new model before it frees the old one: a load that fails leaves the model
that was serving as it was. Where the device holds only one of them, the old one is freed first and
loaded back. The failing model is a real catalog entry whose folder is broken (a config and no
weights or tokenizer): transformers itself refuses it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engines import registry
from engines.device import discover
from engines.lightweight import LightweightEngine
from engines.select import estimate_bytes
from engines.text import SamplingParams

GREEDY = SamplingParams(max_new_tokens=4, temperature=0)


@pytest.fixture
def broken_spec(tmp_path):
    """``qwen2.5-0.5b-instruct`` read from a folder that holds only its config.json."""
    folder = tmp_path / "broken-qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    return dataclasses.replace(registry.get("qwen2.5-0.5b-instruct"), source=str(folder))


def _serves(engine: LightweightEngine, model_id: str) -> str:
    return list(engine.generate_text(model_id, "The file", GREEDY))[-1].text


def test_a_failed_load_leaves_the_serving_model_untouched(cache, broken_spec):
    engine = LightweightEngine(discover(), cache)
    text = registry.get("tiny-llama-pydoc")
    model = engine.load(text)
    before = (engine.states[text.id].phase, engine.states[text.id].reason, _serves(engine, text.id))
    assert engine.fits_beside_loaded(broken_spec)
    with pytest.raises(RuntimeError, match=r"qwen2.5-0.5b-instruct could not be loaded \(OSError") as failed:
        engine.load(broken_spec)
    assert "loaded again" not in str(failed.value)  # nothing was freed for it
    assert engine.models == {text.id: model}  # the same object: never unloaded
    assert (engine.states[text.id].phase, engine.states[text.id].reason, _serves(engine, text.id)) == before
    assert engine.states[broken_spec.id].phase == "not loaded"


def test_where_only_one_fits_the_old_model_is_freed_first_and_loaded_back(cache, broken_spec):
    """A device whose budget holds the new model alone: the old one must go first; when the new one
    fails, the old one is built again and serves, and the error says so."""
    device = discover()
    tight = dataclasses.replace(device, budget_bytes=estimate_bytes(broken_spec, device))
    engine = LightweightEngine(tight, cache)
    text = registry.get("tiny-llama-pydoc")
    first = engine.load(text)
    expected = _serves(engine, text.id)
    assert not engine.fits_beside_loaded(broken_spec)
    with pytest.raises(RuntimeError, match="tiny-llama-pydoc was unloaded first to make room .* and is loaded again"):
        engine.load(broken_spec)
    assert list(engine.models) == [text.id] and engine.models[text.id] is not first  # built again
    assert engine.states[text.id].phase == "eager" and _serves(engine, text.id) == expected


def test_a_switch_that_succeeds_frees_the_old_model_after_the_new_one_loaded(cache):
    engine = LightweightEngine(discover(), cache)
    image, text = registry.get("tiny-shapes-unet"), registry.get("tiny-llama-pydoc")
    engine.load(text)
    engine.load(image)
    assert list(engine.models) == [text.id, image.id]  # one per task
    other = dataclasses.replace(text, id="qwen2.5-0.5b-instruct")  # the embedded weights under another catalog id
    engine.load(other)
    assert list(engine.models) == [image.id, other.id]
    assert engine.states[text.id].phase == "not loaded" and "freed" in engine.states[text.id].reason

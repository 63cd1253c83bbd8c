"""What a stranger can send to a public Space, through `gradio_client` on a real `python app.py` with an
owner configured: every odd id, number, type and size is refused with a message that reaches the
client, and the server's state (`/compile_status`) is the same before and after. Models are served
as the owner chose; an owner's switch that fails leaves the serving model as it was."""

from __future__ import annotations

import time

import pytest
from gradio_client.exceptions import AppError, ValidationError

from tests.app.conftest import BROKEN_HUB_MODEL, OWNER_TOKEN

TEXT, IMAGE = "tiny-llama-pydoc", "tiny-shapes-unet"
GOOD_TEXT = (TEXT, "If the file", 4, 0.0, False, False, "", 1.0)
GOOD_IMAGE = (IMAGE, "a red circle, top left", "32x32", 4, 0, 0.0, False, "off", "", 1.0)


def _status(client) -> list[dict]:
    """The server's state as a visitor can read it, less the figures requests move (speeds, counters)."""
    moving = {"eager_latency_s", "aoti_latency_s", "speedup", "guard_fallbacks", "layout_copies", "last_guard_reason", "compared"}
    deadline = time.time() + 300
    while True:
        rows = client.predict(api_name="/compile_status")
        if not any(r["state"] == "compiling" for r in rows) or time.time() > deadline:
            return [{k: v for k, v in r.items() if k not in moving} for r in rows]
        time.sleep(0.5)


def _with(base: tuple, index: int, value) -> tuple:
    return base[:index] + (value,) + base[index + 1:]


TEXT_ATTEMPTS = [  # (argument index, value, the input the message names, what it says)
    (0, "tiny-llama-pydoc-draft", "model_id", "is a draft model, loaded only with the model it drafts for"),
    (0, "no-such-model", "model_id", "unknown model"),
    (0, 123, "model_id", "`model_id` must be text"),
    (0, IMAGE, "model_id", "is an image model; pick a text model"),
    (0, "qwen2.5-7b-instruct", "model_id", "not available here"),
    (0, BROKEN_HUB_MODEL, "model_id", "is not served here .*loading another model is for the owner"),
    (1, 123, "prompt", "`prompt` must be text"),
    (1, "", "prompt", "empty"),
    (2, 10**9, "max_new_tokens", "between 1 and 200"),
    (2, 0, "max_new_tokens", "`max_new_tokens` must be a whole number between 1 and 200"),
    (2, -5, "max_new_tokens", "`max_new_tokens` must be a whole number between 1"),
    (2, 1.5, "max_new_tokens", "whole number"),
    (2, "ten", "max_new_tokens", "must be a number"),
    (3, -1, "temperature", "`temperature` must be between 0 and 2"),
    (3, 2.5, "temperature", "`temperature` must be between 0 and 2"),
    (3, "hot", "temperature", "must be a number"),
    (4, "yes", "compare", "`compare` must be true or false"),
    (5, 1, "speculative", "`speculative` must be true or false"),
    (6, "outline", "lora", "`lora` 'outline' is not offered for tiny-llama-pydoc \\(offered: shout\\)"),
    (6, ["a"], "lora", "`lora` must be text"),
    (7, 5, "lora_scale", "`lora_scale` must be between 0 and 2"),
]

IMAGE_ATTEMPTS = [
    (0, "tiny-llama-pydoc-draft", "model_id", "is a draft model"),
    (0, TEXT, "model_id", "text model"),
    (1, ["a", "list"], "prompt", "`prompt` must be text"),
    (1, "x" * 5000, "prompt", "at most 1000"),
    (2, 32, "size", "size must look like 32x32, got 32"),
    (2, "64x64", "size", "not offered"),
    (3, 10**6, "steps", "`steps` must be a whole number between 1 and 50"),
    (3, 0, "steps", "`steps` must be a whole number between 1 and 50"),
    (4, 10**20, "seed", "`seed` must be a whole number between 0 and 4294967295"),
    (4, -1, "seed", "`seed` must be a whole number between 0"),
    (4, 0.5, "seed", "whole number"),
    (5, "abc", "guidance", "`guidance` must be a number"),
    (5, 1e9, "guidance", "`guidance` must be between 0 and 10"),
    (6, "yes", "compare", "`compare` must be true or false"),
    (7, "fastest", "step_cache", "`step_cache` must be one of off, fast, faster, got 'fastest'"),
    (7, 2, "step_cache", "`step_cache` must be text"),
    (7, "fast", "step_cache", "step caching .* is not offered for tiny-shapes-unet"),
    (8, "outline", "lora", "`lora` 'outline' is not offered for tiny-shapes-unet \\(offered: none\\)"),
    (8, ["a"], "lora", "`lora` must be text"),
    (9, 5, "lora_scale", "`lora_scale` must be between 0 and 2"),
    (9, "big", "lora_scale", "`lora_scale` must be a number"),
]


@pytest.mark.parametrize(("index", "value", "field", "message"), TEXT_ATTEMPTS, ids=[f"{a[2]}={a[1]!r}"[:40] for a in TEXT_ATTEMPTS])
def test_an_odd_text_request_is_refused_with_its_message_and_changes_nothing(owned, index, value, field, message):
    before = _status(owned)
    with pytest.raises(ValidationError, match=rf"- {field}: .*({message})"):
        owned.predict(*_with(GOOD_TEXT, index, value), api_name="/generate_text")
    assert _status(owned) == before


@pytest.mark.parametrize(("index", "value", "field", "message"), IMAGE_ATTEMPTS, ids=[f"{a[2]}={a[1]!r}"[:40] for a in IMAGE_ATTEMPTS])
def test_an_odd_image_request_is_refused_with_its_message_and_changes_nothing(owned, index, value, field, message):
    before = _status(owned)
    with pytest.raises(ValidationError, match=rf"- {field}: .*({message})"):
        owned.predict(*_with(GOOD_IMAGE, index, value), api_name="/generate_image")
    assert _status(owned) == before


def test_the_text_tab_keeps_serving_everyone_after_the_odd_requests(owned):
    """The attempt that used to take the text tab down (a draft's id) leaves it serving."""
    with pytest.raises(ValidationError):
        owned.predict(*_with(GOOD_TEXT, 0, "tiny-llama-pydoc-draft"), api_name="/generate_text")
    assert owned.predict(*GOOD_TEXT, api_name="/generate_text")
    assert owned.predict(*GOOD_IMAGE, api_name="/generate_image")[0].endswith(".png")
    served = {m["id"] for m in owned.predict(api_name="/models") if m["served"]}
    assert served == {TEXT, IMAGE}


@pytest.mark.parametrize(("args", "field", "message"), [
    (("flux.1-dev", True, False, False, OWNER_TOKEN), "model_id", "flux.1-dev is not available here"),
    (("tiny-llama-pydoc-draft", True, False, False, OWNER_TOKEN), "model_id", "is a draft model"),
    ((TEXT, "maybe", False, False, OWNER_TOKEN), "use_aoti", "`use_aoti` must be true or false"),
    ((TEXT, True, 1, False, OWNER_TOKEN), "fp8", "`fp8` must be true or false"),
    ((TEXT, True, False, False, 42), "admin_token", "`admin_token` must be text"),
    (("flux.1-dev", True, False, False, ""), "model_id", "not available here"),  # a visitor: refused all the same
])
def test_an_odd_optimization_request_is_refused_before_anything_changes(owned, args, field, message):
    """An unavailable model is refused before any model is unloaded (it used to evict the image model,
    then fail with a raw OSError)."""
    before = _status(owned)
    with pytest.raises(ValidationError, match=rf"- {field}: .*{message}"):
        owned.predict(*args, api_name="/set_optimization")
    assert _status(owned) == before


def test_an_owners_switch_that_fails_leaves_the_serving_model_as_it_was(owned):
    """The owner loads a model that is listed as available but cannot load: the text model keeps
    serving (never unloaded), and the message says why."""
    before = _status(owned)
    with pytest.raises(AppError, match=rf"{BROKEN_HUB_MODEL} could not be loaded \(OSError"):
        owned.predict(BROKEN_HUB_MODEL, True, False, False, OWNER_TOKEN, api_name="/set_optimization")
    after = _status(owned)
    assert [r for r in after if r["model"] != BROKEN_HUB_MODEL] == [r for r in before if r["model"] != BROKEN_HUB_MODEL]
    assert next(r for r in after if r["model"] == BROKEN_HUB_MODEL)["state"] == "not loaded"
    assert owned.predict(*GOOD_TEXT, api_name="/generate_text")


def test_a_visitor_cannot_load_another_model_by_generating(owned):
    """Loading a model is the owner's: a visitor naming an available model that is not served is
    refused, and no switch is recorded."""
    switches = len(owned.predict(api_name="/metrics")["switches"])
    with pytest.raises(ValidationError, match="is not served here"):
        owned.predict(*_with(GOOD_TEXT, 0, BROKEN_HUB_MODEL), api_name="/generate_text")
    assert len(owned.predict(api_name="/metrics")["switches"]) == switches

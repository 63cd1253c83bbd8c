"""gradio_client against a launched app: every endpoint, streaming, errors, metrics."""

import time

import pytest
from gradio_client.exceptions import ValidationError
from PIL import Image


def test_models_endpoint_lists_embedded_and_hub_models(client):
    rows = {r["id"]: r for r in client.predict(api_name="/models")}
    assert rows["tiny-llama-pydoc"]["available"] and rows["tiny-shapes-unet"]["available"]
    assert not rows["flux.1-dev"]["available"] and "unreachable" in rows["flux.1-dev"]["reason"]


def test_startup_compiles_the_embedded_models(compiled_app):
    for model in ("tiny-llama-pydoc", "tiny-shapes-unet"):
        assert compiled_app[model]["state"] == "aoti", compiled_app[model]
        assert compiled_app[model]["load_s"] is not None


def test_generate_text_streams(client, compiled_app):
    job = client.submit("tiny-llama-pydoc", "Return the number of", 30, 0.0, api_name="/generate_text")
    outputs = list(job)
    assert len(outputs) >= 5 and outputs[-1].startswith(outputs[2])  # grows token by token
    assert len(outputs[-1].split()) >= 5


def _capitals(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / max(1, len(letters))


def test_a_text_adapter_is_fused_per_request_into_the_compiled_graphs_weights(client, compiled_app):
    """The embedded adapter "shout" (assets/train_text_lora.py) on the compiled text model: the text goes
    on in capitals, the model's row names the adapter, nothing is rebuilt; without it, the first text again."""
    request = ("tiny-llama-pydoc", "Create a new", 24, 0.0, False, False)
    plain = client.predict(*request, "", 1.0, api_name="/generate_text")
    compiles = next(r for r in client.predict(api_name="/compile_status") if r["model"] == "tiny-llama-pydoc")["compiles"]
    shouted = client.predict(*request, "shout", 1.0, api_name="/generate_text")
    assert _capitals(shouted) >= 0.8 > 0.3 >= _capitals(plain), (plain, shouted)
    row = next(r for r in client.predict(api_name="/compile_status") if r["model"] == "tiny-llama-pydoc")
    assert (row["lora"], row["lora_scale"], row["compiles"], row["state"]) == ("shout", 1.0, compiles, "aoti")
    assert row["lora_switch_s"] > 0
    assert client.predict(*request, "", 1.0, api_name="/generate_text") == plain


def test_generate_image_returns_a_png(client, compiled_app):
    path, info = client.predict("tiny-shapes-unet", "a yellow square, top right", "32x32", 10, 1, 0, api_name="/generate_image")
    assert path.endswith(".png")
    image = Image.open(path)
    assert image.size == (32, 32) and "10 steps, median" in info and "aoti" in info


@pytest.mark.parametrize(("args", "field", "message"), [
    (("tiny-llama-pydoc", "", 10, 0.5), "prompt", "empty"),
    (("tiny-llama-pydoc", "hello " * 300, 10, 0.5), "prompt", "at most"),
    (("no-such-model", "hello", 10, 0.5), "model_id", "unknown model"),
    (("tiny-shapes-unet", "hello", 10, 0.5), "model_id", "image model"),
    (("flux.1-dev", "hello", 10, 0.5), "model_id", "text model"),
    (("qwen2.5-7b-instruct", "hello", 10, 0.5), "model_id", "not available"),
])
def test_bad_text_requests_are_refused_at_the_door_with_their_message(client, args, field, message):
    """Refused when they arrive (Gradio's validator, before the device queue): a `ValidationError`
    naming the input, never an error from the queued handler."""
    with pytest.raises(ValidationError, match=rf"- {field}: .*{message}"):
        client.predict(*args, api_name="/generate_text")


@pytest.mark.parametrize(("args", "field", "message"), [
    (("tiny-shapes-unet", "a red circle", "64x64", 10, 0, 0), "size", "not offered"),
    (("tiny-shapes-unet", "a violet blob", "32x32", 10, 0, 0), "prompt", "colour"),
    (("tiny-shapes-unet", "a red circle", "big", 10, 0, 0), "size", "size must look like"),
])
def test_bad_image_requests_are_refused_at_the_door_with_their_message(client, args, field, message):
    with pytest.raises(ValidationError, match=rf"- {field}: .*{message}"):
        client.predict(*args, api_name="/generate_image")


@pytest.mark.parametrize(("api_name", "args", "field", "message"), [
    ("/generate_image", ("tiny-shapes-unet", "a red circle", "32x32", 500, 0, 0), "steps", "between 1 and 50, got 500"),
    ("/generate_text", ("tiny-llama-pydoc", "hello", 10, 2.5), "temperature", "between 0 and 2, got 2.5"),
])
def test_a_value_outside_a_slider_is_refused_with_its_message(client, api_name, args, field, message):
    """The slider's bound is checked by the app's validator on the raw value (Gradio's own check would
    answer a bare 400 whose reason `gradio_client` drops): a `ValidationError` naming the input and
    its bounds."""
    with pytest.raises(ValidationError, match=rf"- {field}: .*{message}"):
        client.predict(*args, api_name=api_name)


def test_a_bad_request_does_not_wait_for_the_device(client, compiled_app):
    """While the device serves a long request and others wait for it, a bad one is refused at once, not
    after them. The waiting requests are the witnesses: a bad request that queued for the device would
    stand behind them, so it would be refused only after the last had run to its end (each takes a few
    tenths of a second on 2 cores, the refusal a few hundredths)."""
    from gradio_client import Client

    busy = Client(client.src, verbose=False)  # a second visitor
    # the longest requests the UI allows, each run twice (compare)
    longest = ("tiny-llama-pydoc", "Return the number of", 200, 0.7, True)
    running = busy.submit(*longest, api_name="/generate_text")
    for _ in range(200):  # until it streams: it holds the device
        if running.status().code.name == "ITERATING":
            break
        time.sleep(0.05)
    witnesses = [busy.submit(*longest, api_name="/generate_text") for _ in range(4)]
    start = time.monotonic()
    with pytest.raises(ValidationError, match="empty"):
        client.predict("tiny-llama-pydoc", "", 10, 0.5, api_name="/generate_text")
    refused_in = time.monotonic() - start
    last_waiting = not witnesses[-1].done()
    for job in (running, *witnesses):
        job.result()
    assert last_waiting, f"the bad request was refused after {refused_in:.2f} s, only once the device was free"


def test_fp8_where_it_cannot_run_is_refused(client):
    with pytest.raises(ValidationError, match="FP8 needs"):  # refused at the door, before the queue
        client.predict("tiny-llama-pydoc", True, True, False, api_name="/set_optimization")


def test_server_keeps_serving_after_errors_and_metrics_reflect_requests(client, compiled_app):
    before = client.predict(api_name="/metrics")["summary"]["count"]
    with pytest.raises(ValidationError):
        client.predict("tiny-llama-pydoc", "", 10, 0.5, api_name="/generate_text")
    client.predict("tiny-llama-pydoc", "The file", 8, 0.0, api_name="/generate_text")
    client.predict("tiny-shapes-unet", "a green circle, center", "32x32", 5, 0, 0, api_name="/generate_image")
    snap = client.predict(api_name="/metrics")
    assert snap["summary"]["count"] == before + 2
    text, image = snap["requests"][-2], snap["requests"][-1]
    assert text["model"] == "tiny-llama-pydoc" and text["tokens"] >= 1 and text["ttft_s"] is not None
    assert image["task"] == "image" and image["steps"] == 5 and image["step_ms"] > 0
    assert text["runtime"] == image["runtime"] == "aoti"
    assert snap["memory"]


def test_switching_aoti_off_and_on(client, compiled_app):
    rows = {r["model"]: r for r in client.predict("tiny-shapes-unet", False, False, False, api_name="/set_optimization")}
    assert rows["tiny-shapes-unet"]["state"] == "eager"
    _, info = client.predict("tiny-shapes-unet", "a red square, center", "32x32", 4, 0, 0, True, api_name="/generate_image")
    assert "not compared with eager: the model runs eager here" in info  # a comparison asked for is never dropped silently
    client.predict("tiny-shapes-unet", True, False, False, api_name="/set_optimization")
    for _ in range(120):
        rows = {r["model"]: r for r in client.predict(api_name="/compile_status")}
        if rows["tiny-shapes-unet"]["state"] != "compiling":
            break
        time.sleep(0.5)
    assert rows["tiny-shapes-unet"]["state"] == "aoti" and rows["tiny-shapes-unet"]["cache_hit"] is True
    client.predict("tiny-shapes-unet", "a red square, center", "32x32", 4, 0, 0, api_name="/generate_image")
    rows = {r["model"]: r for r in client.predict(api_name="/compile_status")}
    assert rows["tiny-shapes-unet"]["measured"]["rounds"] >= 5  # timed against eager again at the bind


def test_a_visitor_compares_compiled_with_eager_for_one_request_and_changes_nothing(client, compiled_app):
    states = lambda: {r["model"]: (r["state"], r["compiles"]) for r in client.predict(api_name="/compile_status")}  # noqa: E731
    before = states()
    _, info = client.predict("tiny-shapes-unet", "a red circle, top left", "32x32", 4, 0, 0, True, api_name="/generate_image")
    assert " · your A/B, one request each: compiled " in info and " ms a step, eager " in info
    client.predict("tiny-llama-pydoc", "If the file", 12, 0.0, True, api_name="/generate_text")
    image, text = client.predict(api_name="/metrics")["requests"][-2:]
    for record in (image, text):
        assert record["runtime"] == "aoti" and set(record["compared"]) == {"aoti", "eager"}
        assert record["compared"]["eager"] > 0 and record["compared"]["aoti"] > 0
    assert states() == before  # nothing switched, nothing compiled
    _, info = client.predict("tiny-shapes-unet", "a red circle, top left", "32x32", 4, 0, 0, api_name="/generate_image")
    assert info.endswith("aoti")  # the next request runs compiled, as before

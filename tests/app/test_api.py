"""gradio_client against a launched app: every endpoint, streaming, errors, metrics."""

import pytest
from gradio_client.exceptions import AppError
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


def test_generate_image_returns_a_png(client, compiled_app):
    path, info = client.predict("tiny-shapes-unet", "a yellow square, top right", "32x32", 10, 1, 0, api_name="/generate_image")
    assert path.endswith(".png")
    image = Image.open(path)
    assert image.size == (32, 32) and "10 steps" in info and "aoti" in info


@pytest.mark.parametrize(("args", "message"), [
    (("tiny-llama-pydoc", "", 10, 0.5), "empty"),
    (("tiny-llama-pydoc", "hello " * 300, 10, 0.5), "at most"),
    (("no-such-model", "hello", 10, 0.5), "unknown model"),
    (("tiny-shapes-unet", "hello", 10, 0.5), "image model"),
    (("flux.1-dev", "hello", 10, 0.5), "text model"),
    (("qwen2.5-7b-instruct", "hello", 10, 0.5), "not available"),
])
def test_text_errors_arrive_as_app_errors(client, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/generate_text")


@pytest.mark.parametrize(("args", "message"), [
    (("tiny-shapes-unet", "a red circle", "64x64", 10, 0, 0), "not offered"),
    (("tiny-shapes-unet", "a red circle", "32x32", 500, 0, 0), "greater than maximum value 50"),
    (("tiny-shapes-unet", "a violet blob", "32x32", 10, 0, 0), "colour"),
    (("tiny-shapes-unet", "a red circle", "big", 10, 0, 0), "size must look like"),
])
def test_image_errors_arrive_as_app_errors(client, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/generate_image")


def test_fp8_where_it_cannot_run_is_refused(client):
    with pytest.raises(AppError, match="FP8 needs"):
        client.predict("tiny-llama-pydoc", True, True, False, api_name="/set_optimization")


def test_server_keeps_serving_after_errors_and_metrics_reflect_requests(client, compiled_app):
    before = client.predict(api_name="/metrics")["summary"]["count"]
    with pytest.raises(AppError):
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
    client.predict("tiny-shapes-unet", "a red square, center", "32x32", 4, 0, 0, api_name="/generate_image")
    client.predict("tiny-shapes-unet", True, False, False, api_name="/set_optimization")
    for _ in range(120):
        rows = {r["model"]: r for r in client.predict(api_name="/compile_status")}
        if rows["tiny-shapes-unet"]["state"] != "compiling":
            break
        import time

        time.sleep(0.5)
    assert rows["tiny-shapes-unet"]["state"] == "aoti" and rows["tiny-shapes-unet"]["cache_hit"] is True
    client.predict("tiny-shapes-unet", "a red square, center", "32x32", 4, 0, 0, api_name="/generate_image")
    rows = {r["model"]: r for r in client.predict(api_name="/compile_status")}
    assert rows["tiny-shapes-unet"]["speedup"] is not None  # both eager and AOTI step times were seen


def test_a_visitor_compares_compiled_with_eager_for_one_request_and_changes_nothing(client, compiled_app):
    states = lambda: {r["model"]: (r["state"], r["compiles"]) for r in client.predict(api_name="/compile_status")}  # noqa: E731
    before = states()
    _, info = client.predict("tiny-shapes-unet", "a red circle, top left", "32x32", 4, 0, 0, True, api_name="/generate_image")
    assert " · compiled " in info and " ms a step, eager " in info and "speedup" in info
    client.predict("tiny-llama-pydoc", "If the file", 12, 0.0, True, api_name="/generate_text")
    image, text = client.predict(api_name="/metrics")["requests"][-2:]
    for record in (image, text):
        assert record["runtime"] == "aoti" and set(record["compared"]) == {"aoti", "eager"}
        assert record["compared"]["eager"] > 0 and record["compared"]["aoti"] > 0
    assert states() == before  # nothing switched, nothing compiled
    _, info = client.predict("tiny-shapes-unet", "a red circle, top left", "32x32", 4, 0, 0, api_name="/generate_image")
    assert info.endswith("aoti")  # the next request runs compiled, as before

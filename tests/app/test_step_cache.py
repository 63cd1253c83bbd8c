"""The embedded DiT through a real server and `gradio_client`: loaded by its owner's Apply (regional by
default), it serves images with step caching off and on, and with its LoRA adapter and without; the
measurement line, `/metrics` and the card say what each request ran with. The image model served
before is switched back in at the end."""

from __future__ import annotations

import re
import time

import numpy as np
from PIL import Image

from engines.pipelines.shapes import draws, outlined

DIT, UNET = "tiny-shapes-dit", "tiny-shapes-unet"
PROMPT = "a green square, top right"


def _row(client, model_id: str, until: tuple[str, ...] = ("aoti", "fallback")) -> dict:
    deadline = time.time() + 300
    while True:
        row = next(r for r in client.predict(api_name="/compile_status") if r["model"] == model_id)
        if row["state"] in until or time.time() > deadline:
            return row
        time.sleep(0.5)


def test_the_dit_serves_regionally_with_and_without_step_caching(client, compiled_app):
    client.predict(DIT, True, False, True, api_name="/set_optimization")
    row = _row(client, DIT)
    assert row["state"] == "aoti" and row["reason"].startswith("regional"), row
    assert row["requested"]["regional"] is True
    images, infos = {}, {}
    for level in ("off", "fast"):
        path, infos[level] = client.predict(DIT, PROMPT, "32x32", 20, 7, 0, False, level, api_name="/generate_image")
        images[level] = Image.open(path).convert("RGB")
        assert draws(images[level], PROMPT), level
    assert "reused" not in infos["off"]
    reused = re.search(r"20 steps \((\d+) reused the step before: step caching fast\)", infos["fast"])
    assert reused and int(reused.group(1)) >= 3, infos["fast"]
    mse = np.mean((np.asarray(images["off"], float) - np.asarray(images["fast"], float)) ** 2)
    assert mse == 0 or 10 * np.log10(255**2 / mse) > 24  # close to the uncached image (a broken reuse: ~10-15 dB)
    records = [r for r in client.predict(api_name="/metrics")["requests"] if r["model"] == DIT]
    assert [(r["step_cache"], r["cached_steps"]) for r in records[-2:]] == [("", None), ("fast", int(reused.group(1)))]

    # The embedded adapter, per request, on the same compiled graphs; without it, the first image again.
    compiles = _row(client, DIT)["compiles"]
    path, info = client.predict(DIT, PROMPT, "32x32", 20, 7, 0, False, "off", "outline", 1.0, api_name="/generate_image")
    assert re.search(r"LoRA outline at 1, switched in \d+ ms \(no rebuild\)", info), info
    assert outlined(Image.open(path).convert("RGB"), PROMPT)
    row = _row(client, DIT)
    assert (row["lora"], row["lora_scale"], row["compiles"], row["state"]) == ("outline", 1.0, compiles, "aoti")
    path, info = client.predict(DIT, PROMPT, "32x32", 20, 7, 0, False, "off", "", 1.0, api_name="/generate_image")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(images["off"])) and "LoRA" not in info

    # Back to the image model the other tests expect: its graphs bound again from the cache.
    assert client.predict(UNET, "a red circle", "32x32", 4, 0, 0, api_name="/generate_image")[0].endswith(".png")
    assert _row(client, UNET)["state"] == "aoti"

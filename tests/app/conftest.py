"""A real `python app.py` server for the API and browser tests (one per session)."""

from __future__ import annotations

import time

import pytest

from benchmarks.harness.servers import start_app, stop_app


@pytest.fixture(scope="session")
def app_url(cache_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("app") / "app.log"
    proc, url = start_app(log, cache_dir, timeout=180)
    try:
        yield url
    finally:
        stop_app(proc, log)


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="session")
def compiled_app(client):
    """Wait until the background startup has swapped in both embedded models' AOTI graphs."""
    deadline = time.time() + 600
    while time.time() < deadline:
        rows = {r["model"]: r for r in client.predict(api_name="/compile_status")}
        states = [rows["tiny-llama-pydoc"]["state"], rows["tiny-shapes-unet"]["state"]]
        if all(s in ("aoti", "fallback") for s in states):
            return rows
        time.sleep(1)
    raise TimeoutError(f"startup compile did not finish: {states}")


OWNER_TOKEN = "s3cret-token"
BROKEN_HUB_MODEL = "qwen2.5-0.5b-instruct"  # in the owned server's Hugging Face cache with a config and nothing else
OWNER_ADAPTER = "outline-owner"  # the owned server's owner allows it (`AOTI_ADAPTERS`)


@pytest.fixture(scope="session")
def owned(cache_dir, tmp_path_factory):
    """A real `python app.py` with an owner (alice, or the admin token) and no startup compile, as a
    public Space runs; its Hugging Face cache holds `BROKEN_HUB_MODEL` with a config.json alone, so
    that model is listed as available and fails when loaded; the owner allows one more adapter
    (`OWNER_ADAPTER`, a copy of the embedded one). A `gradio_client.Client` for it."""
    import json

    from gradio_client import Client

    from benchmarks.harness.hub_cache import new_snapshot
    from engines import registry

    folder = tmp_path_factory.mktemp("owned")
    snapshot = new_snapshot(folder / "hf", registry.get(BROKEN_HUB_MODEL).source)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    adapter = [{"id": OWNER_ADAPTER, "model": "tiny-shapes-dit", "source": registry.adapter("tiny-shapes-dit", "outline").source}]
    env = {"AOTI_ADMIN_TOKEN": OWNER_TOKEN, "AOTI_OWNERS": "alice", "AOTI_COMPILE": "0", "AOTI_QUEUE_MAX": "2",
           "HF_HOME": str(folder / "hf"), "AOTI_ADAPTERS": json.dumps(adapter)}
    proc, url = start_app(folder / "app.log", cache_dir, env)
    try:
        client = Client(url, verbose=False)
        deadline = time.time() + 120
        while any(r["state"] == "not loaded" for r in client.predict(api_name="/compile_status")
                  if r["model"] in ("tiny-llama-pydoc", "tiny-shapes-unet")) and time.time() < deadline:
            time.sleep(0.5)
        yield client
    finally:
        stop_app(proc, folder / "app.log")

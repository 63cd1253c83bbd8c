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

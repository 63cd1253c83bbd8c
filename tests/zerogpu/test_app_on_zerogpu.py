"""`python app.py` under spaces' own ZeroGPU code path, through `gradio_client`.

spaces 0.51.3 runs as on a Space: its patched torch in the main process, the fork of a worker per GPU
call (reused while the scheduler reports the GPU idle, a new one for every call while it reports it
busy), the pickled argument and result queues, the device API calls. Two things stand in: the device
API (`benchmarks.harness.zerogpu_api.DeviceAPI`, a server on 127.0.0.1) and the GPU itself (`standin/sitecustomize.py`:
the CPU, with a worker's two CUDA steps done on it). Nothing of the app is patched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.harness.servers import ROOT, start_app, stop_app
from benchmarks.harness.zerogpu_api import DeviceAPI

STANDIN = Path(__file__).resolve().parent / "standin"
TEXT, IMAGE, DIT = "tiny-llama-pydoc", "tiny-shapes-unet", "tiny-shapes-dit"
RETRY_S = 10  # busy mode: a refused startup compile is tried again after this long (then 2x, 3x ...)
# idle: the scheduler reports the GPU idle, spaces reuses a function's worker. busy: a new fork for
# every call, and every /schedule for more than 300 s (the startup compile's) is refused (503) until
# the test lets it through: the requests' shorter calls are served meanwhile.
MODES = {"idle": {"idle": True}, "busy": {"idle": False, "hold_longer_than": 300}}


def zerogpu_env(api: DeviceAPI, home: Path) -> dict[str, str]:
    return {"SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": api.url, "PYTHONPATH": str(STANDIN),
            "HOME": str(home), "AOTI_STARTUP_RETRY_S": str(RETRY_S)}


@pytest.fixture(scope="module", params=list(MODES))
def space(request, cache_dir, tmp_path_factory):
    from gradio_client import Client

    api = DeviceAPI(**MODES[request.param])
    folder = tmp_path_factory.mktemp(f"zerogpu-{request.param}")
    proc, url = start_app(folder / "app.log", cache_dir, zerogpu_env(api, folder), timeout=600)
    try:
        yield SimpleNamespace(mode=request.param, api=api, client=Client(url, verbose=False))
    finally:
        stop_app(proc, folder / "app.log")
        api.close()


def states(client) -> dict[str, dict]:
    return {row["model"]: row for row in client.predict(api_name="/compile_status")}


def wait_compiled(client, timeout: float = 600) -> dict[str, dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = states(client)
        if rows[TEXT]["state"] == "aoti" and rows[IMAGE]["state"] == "aoti":
            return rows
        time.sleep(1)
    raise TimeoutError(f"not compiled: {[(r['state'], r['reason']) for r in (rows[TEXT], rows[IMAGE])]}")


def last_requests(client, n: int) -> list[dict]:
    return client.predict(api_name="/metrics")["requests"][-n:]


def test_startup_compiles_in_a_gpu_call_and_a_refusal_leaves_the_app_serving(space):
    if space.mode == "busy":  # the startup compile's /schedule is refused: up, eager, with the reason
        rows = states(space.client)
        assert rows[TEXT]["state"] == rows[IMAGE]["state"] == "fallback"
        assert "No GPU was available" in rows[TEXT]["reason"] and "trying again" in rows[TEXT]["reason"]
        space.client.predict(TEXT, "If the file", 4, 0.0, api_name="/generate_text")
        assert last_requests(space.client, 1)[0]["runtime"] == "eager"
        space.api.release()  # a GPU for the compile's next try
    rows = wait_compiled(space.client)
    for model in (TEXT, IMAGE):
        assert rows[model]["ref"]["key"] and rows[model]["reason"] in ("compiled now", "from the local cache")
        assert rows[model]["measured"]["rounds"] >= 5  # timed against eager in the startup GPU call, returned with the state
    paths = [c["path"] for c in space.api.calls]
    assert paths[0] == "/schedule" and "/startup-report" in paths  # a GPU call at startup, then the launch


def test_requests_bind_the_compiled_graphs_in_their_workers(space):
    wait_compiled(space.client)
    for _ in range(2):
        text = space.client.predict(TEXT, "If the file", 12, 0.0, api_name="/generate_text")
        assert text.strip()
        _, info = space.client.predict(IMAGE, "a red circle, top left", "32x32", 4, 0, 0, api_name="/generate_image")
        assert info.endswith("aoti")
    records = last_requests(space.client, 4)
    assert [r["runtime"] for r in records] == ["aoti"] * 4, records
    assert all(r["ok"] and r["peak_mem_mb"] and r["setup_s"] is not None for r in records)
    # compiled calls really ran in the worker, and the shape guard sent none of them to eager
    assert all(r["compiled_calls"] > 0 and r["guard_fallbacks"] == 0 for r in records), records
    assert records[0]["tokens"] > 1 and records[0]["tokens_per_s"]  # timed in the worker
    first_text, second_text = records[0], records[2]
    rows = states(space.client)
    if space.mode == "idle":  # one worker per function, reused: the graphs are bound once
        assert second_text["worker_pid"] == first_text["worker_pid"] and second_text["bind_s"] == 0.0
        assert not second_text["warmup"] and records[3]["warmup"] is False
        assert rows[TEXT]["aoti_latency_s"] and rows[IMAGE]["aoti_latency_s"]  # measured in the workers, warm
    else:  # a fresh fork for every call: each binds the graphs again, so each is a warm-up, counted apart
        assert len({r["worker_pid"] for r in records}) == 4
        assert all(r["bind_s"] > 0 and r["warmup"] for r in records)
        assert space.client.predict(api_name="/metrics")["summary"]["warmups"] >= 4
    assert first_text["worker_pid"] != os.getpid()
    assert rows[TEXT]["measured"] and rows[IMAGE]["measured"]  # the speed at load, from the startup GPU call


def test_a_speculative_request_runs_the_compiled_draft_in_its_worker(space):
    """The draft is compiled with its model in the startup GPU call and bound with it in the worker:
    greedy speculative text equals plain text, and the worker's acceptance reaches /metrics and the card."""
    rows = wait_compiled(space.client)
    assert rows[TEXT]["ref"]["draft"]["key"]
    plain = space.client.predict(TEXT, "If the file", 24, 0.0, False, False, api_name="/generate_text")
    fast = space.client.predict(TEXT, "If the file", 24, 0.0, False, True, api_name="/generate_text")
    assert fast == plain and fast.strip()
    record = last_requests(space.client, 1)[0]
    assert record["runtime"] == "aoti" and record["acceptance"] is not None and record["worker_pid"] != os.getpid()
    row = states(space.client)[TEXT]
    assert row["acceptance"] == record["acceptance"] and not [f for f in row["fallbacks"] if "draft" in f]
    # speculation and "compare with eager": said, not run, and its speed kept out of the compiled-vs-eager speeds
    speeds = (row["aoti_latency_s"], row["eager_latency_s"])
    space.client.predict(TEXT, "If the file", 24, 0.0, True, True, api_name="/generate_text")
    record = last_requests(space.client, 1)[0]
    assert record["compared"] is None and "speculative decoding's speed is its own" in record["compare_note"]
    assert (states(space.client)[TEXT]["aoti_latency_s"], states(space.client)[TEXT]["eager_latency_s"]) == speeds


def test_bad_requests_are_refused_with_their_messages_before_any_gpu_call(space):
    from gradio_client.exceptions import ValidationError

    scheduled = len(space.api.scheduled())
    with pytest.raises(ValidationError, match="`prompt` is empty"):
        space.client.predict(TEXT, "", 10, 0.5, api_name="/generate_text")
    with pytest.raises(ValidationError, match="size 64x64 is not offered for tiny-shapes-unet"):
        space.client.predict(IMAGE, "a red circle", "64x64", 4, 0, 0, api_name="/generate_image")
    with pytest.raises(ValidationError, match="the prompt names no shape"):
        space.client.predict(IMAGE, "something red", "32x32", 4, 0, 0, api_name="/generate_image")
    assert len(space.api.scheduled()) == scheduled  # no GPU time was asked for
    space.client.predict(TEXT, "The file", 6, 0.0, api_name="/generate_text")
    assert last_requests(space.client, 1)[0]["ok"] is True


def test_switching_aoti_off_and_on_is_what_the_next_request_runs(space):
    wait_compiled(space.client)
    off = {r["model"]: r for r in space.client.predict(TEXT, False, False, False, api_name="/set_optimization")}
    assert off[TEXT]["state"] == "eager"
    space.client.predict(TEXT, "The file", 6, 0.0, api_name="/generate_text")
    assert last_requests(space.client, 1)[0]["runtime"] == "eager"
    scheduled = len(space.api.scheduled())
    on = {r["model"]: r for r in space.client.predict(TEXT, True, False, False, api_name="/set_optimization")}
    assert on[TEXT]["state"] == "aoti" and on[TEXT]["reason"] == "from the local cache"
    assert len(space.api.scheduled()) == scheduled + 1  # the compile ran in a GPU call
    space.client.predict(TEXT, "The file", 6, 0.0, api_name="/generate_text")
    assert last_requests(space.client, 1)[0]["runtime"] == "aoti"


def test_a_lora_request_fuses_its_adapter_in_the_worker_and_the_next_gets_the_models_own_weights(space):
    """The adapter travels with the request: the worker (a fresh fork when busy, the reused one when idle)
    fuses it and draws outlines (writes capitals, for the text model); the next request without it gets
    the model's own weights back, and the first image (text) bit for bit."""
    import numpy as np
    from PIL import Image

    from engines.pipelines.shapes import outlined

    wait_compiled(space.client)
    prompt, args = "a green square, top right", ("32x32", 20, 7, 0, False, "off")
    images, infos = [], []
    for lora in ("", "outline", ""):
        path, info = space.client.predict(DIT, prompt, *args, lora, 1.0, api_name="/generate_image")
        images.append(np.asarray(Image.open(path).convert("RGB")))
        infos.append(info)
    assert "LoRA" not in infos[0] and "LoRA" not in infos[2]
    assert "LoRA outline at 1, switched in" in infos[1], infos[1]
    assert outlined(Image.fromarray(images[1]), prompt) and not np.array_equal(images[1], images[0])
    assert np.array_equal(images[2], images[0])
    records = last_requests(space.client, 3)
    assert all(r["ok"] and r["worker_pid"] != os.getpid() for r in records), records
    if space.mode == "busy":
        assert len({r["worker_pid"] for r in records}) == 3

    # The text model's embedded adapter the same way: capitals in the worker, then the model's own text.
    texts = [space.client.predict(TEXT, "Create a new", 12, 0.0, False, False, lora, 1.0, api_name="/generate_text")
             for lora in ("", "shout", "")]
    letters = [[c for c in text if c.isalpha()] for text in texts]
    assert sum(c.isupper() for c in letters[1]) >= 0.8 * len(letters[1]) and texts[2] == texts[0] != texts[1], texts
    assert [r["lora"] for r in last_requests(space.client, 3)] == ["", "shout", ""]


def test_a_worker_that_cannot_bind_serves_eager_and_says_why(space, cache_dir, tmp_path):
    if space.mode != "busy":
        pytest.skip("needs a fresh worker for the next call (busy mode)")
    key = wait_compiled(space.client)[IMAGE]["ref"]["key"]
    entry = cache_dir / "artifacts" / key
    intact = tmp_path / "entry"  # the whole entry: the worker removes a damaged one, manifest and all
    if entry.is_dir():
        shutil.copytree(entry, intact)
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "package.pt2").write_bytes(b"damaged")  # the next fresh worker finds the package damaged
    try:
        _, info = space.client.predict(IMAGE, "a blue square, center", "32x32", 3, 0, 0, api_name="/generate_image")
    finally:  # the shared cache as it was: a server started later loads the entry rather than rebuild it
        shutil.rmtree(entry, ignore_errors=True)
        if intact.is_dir():
            shutil.copytree(intact, entry)
    assert info.endswith("eager")
    record = last_requests(space.client, 1)[0]
    assert record["ok"] and record["runtime"] == "eager"
    row = states(space.client)[IMAGE]
    assert row["state"] == "fallback" and "could not bind" in row["reason"] and row["fallbacks"]


def test_an_error_raised_in_a_worker_reaches_the_caller_with_its_message(tmp_path):
    """spaces sends a worker's exception back as its class name only, unless it is a `gr.Error`: the
    app's GPU functions raise every error as one. Called past the main process's validation."""
    api = DeviceAPI()
    script = (
        "import app\n"
        "from engines import ImageParams\n"
        "try:\n"
        "    app.IMAGE_ON_GPU['large']('tiny-shapes-unet', 'a purple hexagon', ImageParams(32, 32, 2), None)\n"
        "except Exception as exc:\n"
        "    print('ERROR', type(exc).__name__, exc.message)\n"
    )
    env = {**os.environ, **zerogpu_env(api, tmp_path), "AOTI_COMPILE": "0", "AOTI_CACHE_DIR": str(tmp_path / "cache")}
    try:
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        api.close()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ERROR")), out.stderr[-2000:])
    assert line.startswith("ERROR Error this model draws a colour"), line
    assert "the prompt names no colour and no shape" in line
    assert len(api.scheduled()) == 1  # the call was scheduled: it ran in a forked worker
    assert "GPU call refused its input: this model draws a colour" in out.stdout + out.stderr  # logged, not silent

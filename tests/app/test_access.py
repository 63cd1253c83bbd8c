"""Owner-only actions on a server that has an owner: a visitor is refused with a message and changes
nothing; the admin token works; generating stays open to all."""

import time

import pytest

from tests.servers import start_app, stop_app

TOKEN = "s3cret-token"
TEXT = "tiny-llama-pydoc"


@pytest.fixture(scope="module")
def owned(cache_dir, tmp_path_factory):
    from gradio_client import Client

    log = tmp_path_factory.mktemp("owned") / "app.log"
    proc, url = start_app(log, cache_dir, {"AOTI_ADMIN_TOKEN": TOKEN, "AOTI_OWNERS": "alice", "AOTI_COMPILE": "0"})
    try:
        client = Client(url, verbose=False)
        deadline = time.time() + 120
        while _state(client)["state"] == "not loaded" and time.time() < deadline:
            time.sleep(0.5)
        yield client
    finally:
        stop_app(proc, log)


def _state(client) -> dict:
    return next(r for r in client.predict(api_name="/compile_status") if r["model"] == TEXT)


def test_a_visitor_is_refused_every_owner_action_and_the_server_does_not_change(owned):
    from gradio_client.exceptions import AppError

    before = _state(owned)
    for token in ("", "wrong"):
        for args in ((TEXT, False, False, False), (TEXT, True, False, False)):
            with pytest.raises(AppError, match="Only the owner can change this server.*as alice.*AOTI_ADMIN_TOKEN"):
                owned.predict(*args, token, api_name="/set_optimization")
    after = _state(owned)
    assert (after["state"], after["reason"]) == (before["state"], before["reason"])
    assert owned.predict(TEXT, "If the file", 4, 0.0, api_name="/generate_text")  # generating is open to all


def test_the_admin_token_changes_the_server(owned):
    rows = {r["model"]: r for r in owned.predict(TEXT, False, False, False, TOKEN, api_name="/set_optimization")}
    assert rows[TEXT]["state"] == "eager" and rows[TEXT]["reason"] == "AOTI switched off"

"""Owner-only actions on a server that has an owner: a visitor is refused with a message and changes
nothing; the admin token works; generating stays open to all; repeated compile requests join one; a
full queue says so."""

import time
from pathlib import Path

import pytest

from benchmarks.harness.servers import start_app, stop_app
from tests.app.conftest import OWNER_ADAPTER
from tests.app.conftest import OWNER_TOKEN as TOKEN
from tests.app.test_browser import CHROMIUM

TEXT = "tiny-llama-pydoc"


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


def test_visitors_are_offered_the_adapters_the_owner_allows(owned):
    rows = {r["id"]: r for r in owned.predict(api_name="/models")}
    assert rows["tiny-shapes-dit"]["adapters"] == ["outline", OWNER_ADAPTER]  # the catalog's, then the owner's (AOTI_ADAPTERS)
    assert rows["tiny-shapes-unet"]["adapters"] == []


def test_the_admin_token_changes_the_server(owned):
    rows = {r["model"]: r for r in owned.predict(TEXT, False, False, False, TOKEN, api_name="/set_optimization")}
    assert rows[TEXT]["state"] == "eager" and rows[TEXT]["reason"] == "AOTI switched off"


def test_fifty_rapid_compile_requests_start_one_compile(owned):
    before = _state(owned)["compiles"]
    for _ in range(50):  # one after another as fast as they are answered (the queue holds two)
        owned.predict(TEXT, True, False, False, TOKEN, api_name="/set_optimization")
    deadline = time.time() + 300
    while _state(owned)["state"] == "compiling" and time.time() < deadline:
        time.sleep(0.5)
    state = _state(owned)
    assert state["state"] == "aoti" and state["compiles"] == before + 1, state
    owned.predict(TEXT, True, False, False, TOKEN, api_name="/set_optimization")  # the same again: nothing to do
    assert _state(owned)["compiles"] == before + 1


def test_a_full_queue_answers_busy(owned):
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    jobs = [owned.submit(TEXT, "If the file", 200, 0.7, api_name="/generate_text") for _ in range(6)]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=300)
            outcomes.append("served")
        except (QueueError, AppError) as exc:
            outcomes.append(str(exc))
    refused = [o for o in outcomes if o != "served"]
    assert refused and all("Queue is full" in o for o in refused), outcomes
    assert outcomes.count("served") >= 2  # the one running and the ones the queue held


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (scripts/test.sh installs it)")
def test_a_visitor_sees_the_optimization_controls_read_only_with_the_reason(cache_dir, tmp_path_factory):
    """An owner-only server (no token): the Apply button and switches are disabled for a visitor, and the
    tab says who may change the server and how."""
    from playwright.sync_api import expect, sync_playwright

    from tests.app.test_browser import FLAGS

    folder = tmp_path_factory.mktemp("owners-only")
    proc, url = start_app(folder / "app.log", cache_dir, {"AOTI_OWNERS": "alice", "AOTI_COMPILE": "0"})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(str(folder / "profile"), executable_path=CHROMIUM, args=FLAGS,
                                                           headless=True, viewport={"width": 1400, "height": 1000})
            page = browser.new_page()
            page.goto(url)
            page.get_by_role("tab", name="Optimization").click()
            expect(page.locator("#access-note")).to_contain_text("sign in with Hugging Face as alice", timeout=60_000)
            expect(page.locator("#opt-apply")).to_be_disabled(timeout=30_000)
            expect(page.get_by_label("AOTI", exact=True)).to_be_disabled()
            browser.close()
    finally:
        stop_app(proc, folder / "app.log")

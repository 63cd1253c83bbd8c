"""A real browser (Debian Chromium driven by Playwright) uses the page like a person would."""

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SCREENSHOT = Path(os.environ.get("AOTI_SCREENSHOT", Path(__file__).resolve().parents[2] / "out" / "screenshot.png"))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (scripts/test.sh installs it)")


def test_page_generates_text_and_an_image_and_the_panel_updates(app_url, client, compiled_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    before = client.predict(api_name="/metrics")["summary"]["count"]

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM, args=FLAGS,
                                                       headless=True, viewport={"width": 1400, "height": 1000})
        page = browser.new_page()
        page.goto(app_url)
        expect(page.get_by_text("AOTI Studio").first).to_be_visible(timeout=60_000)

        # A fresh page, no request made by it: every compiled card already says how the compiled graphs
        # compare with eager, measured when they were bound, with its spread.
        cards = page.locator("#model-cards")
        for model in ("tiny-llama-pydoc", "tiny-shapes-unet"):
            card = cards.locator(f'[data-model="{model}"]')
            expect(card.locator(".badge")).to_have_text("compiled", timeout=60_000)
            expect(card.locator(".speedup")).to_have_text(re.compile(r"(\d[\d.]*× (faster|slower)|no measurable difference)"))
            expect(card).to_contain_text("hot module, measured at load")

        # Text tab: generate and see the streamed output.
        page.locator("#text-prompt textarea").fill("Return the number of")
        page.locator("#text-generate").click()
        output = page.locator("#text-output textarea")
        expect(output).to_have_value(re.compile(r"(\S+\s+){3,}"), timeout=60_000)  # streamed words

        expect(page.get_by_text(f"Requests {before + 1} ").first).to_be_visible(timeout=60_000)  # done streaming

        # An empty prompt is refused at the door, its message shown to the person.
        page.locator("#text-prompt textarea").fill("")
        page.locator("#text-generate").click()
        expect(page.get_by_text("`prompt` is empty").first).to_be_visible(timeout=15_000)
        page.locator("#text-prompt textarea").fill("Return the number of")

        # Image tab: generate and see a PNG.
        page.get_by_role("tab", name="Image").click()
        # Step caching is offered per model: for the UNet the choice is off, disabled, and says where it is offered.
        expect(page.locator("#image-step-cache")).to_contain_text("not offered for tiny-shapes-unet (offered for: tiny-shapes-dit")
        expect(page.locator("#image-step-cache input[value='fast']")).to_be_disabled()
        expect(page.locator("#image-lora")).to_contain_text("LoRA adapter: none offered for tiny-shapes-unet")
        page.locator("#image-prompt textarea").fill("a blue circle, bottom left")
        page.locator("#image-generate").click()
        expect(page.locator("#image-output img").first).to_be_visible(timeout=60_000)
        assert ".png" in (page.locator("#image-output img").first.get_attribute("src") or "")

        # Once more, compared with eager: the image model's card then has both speeds.
        page.locator("#image-compare input").check()
        page.locator("#image-generate").click()
        expect(page.locator("#image-info")).to_contain_text("your A/B, one request each: compiled", timeout=60_000)

        # Side panel: the live summary counts the requests; each model's card shows it compiled, and the
        # image model's card how much faster, inside the sidebar with nothing behind a horizontal scroll.
        expect(page.get_by_text(f"Requests {before + 3} ").first).to_be_visible(timeout=15_000)
        image_card = cards.locator('[data-model="tiny-shapes-unet"]')
        expect(image_card).to_contain_text("your A/B, one request each", timeout=15_000)  # as the info line said
        expect(image_card).to_contain_text("ms a denoising step")
        _assert_inside_the_sidebar(cards, image_card)

        # The latency plot counts requests in whole numbers and lists only the models that have requests.
        plot_text = page.locator("#latency-plot svg text")
        expect(plot_text.first).to_be_attached(timeout=15_000)
        labels = plot_text.all_text_contents()
        x_ticks = labels[:labels.index("request")]
        assert x_ticks and all(t.isdigit() for t in x_ticks), labels
        assert "tiny-llama-pydoc" in labels and "tiny-shapes-unet" in labels and "qwen2.5-7b-instruct" not in labels, labels

        _assert_ticks_readable(page, "#latency-plot")
        _assert_ticks_readable(page, "#memory-plot")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # 1024 px wide: the page and the panel side by side, the cards still whole inside the sidebar.
        page.set_viewport_size({"width": 1024, "height": 800})
        expect(image_card.locator(".speedup")).to_have_text(re.compile(r"(\d[\d.]*× (faster|slower)|no measurable difference)"))
        _assert_inside_the_sidebar(cards, image_card)
        assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        _assert_ticks_readable(page, "#latency-plot")
        _assert_ticks_readable(page, "#memory-plot")
        page.screenshot(path=str(SCREENSHOT.with_name(f"{SCREENSHOT.stem}-1024.png")), full_page=True)

        # Optimization tab: FP8 can't run on the CPU: disabled, the reason beside it; applying shows cards.
        page.get_by_role("tab", name="Optimization").click()
        expect(page.locator("#opt-fp8 input")).to_be_disabled(timeout=15_000)
        expect(page.locator("#opt-fp8")).to_contain_text("FP8: needs a GPU of compute capability 8.9 or newer; this server runs on the CPU")
        expect(page.locator("#opt-regional input")).to_be_disabled()  # the text model has no repeated blocks to compile alone
        expect(page.locator("#opt-regional")).to_contain_text("not offered for tiny-llama-pydoc")
        page.locator("#opt-apply").click()
        expect(page.locator('#opt-cards [data-model="tiny-llama-pydoc"] .badge')).to_be_visible(timeout=30_000)

        # A phone, 390 px wide: the panel starts closed so the page is usable; opened, it fits the width.
        phone = browser.new_page()
        phone.set_viewport_size({"width": 390, "height": 844})
        phone.goto(app_url)
        generate = phone.locator("#text-generate")
        expect(generate).to_be_visible(timeout=60_000)
        sidebar = phone.locator(".sidebar").first
        expect(sidebar).not_to_have_class(re.compile(r"\bopen\b"), timeout=15_000)
        expect(phone.locator(".sidebar .toggle-button").first).to_contain_text("Live")  # not a bare chevron
        phone.locator("#text-prompt textarea").fill("If the file")
        generate.click()  # not covered by the panel
        expect(phone.locator("#text-output textarea")).to_have_value(re.compile(r"\S"), timeout=60_000)
        phone.locator(".sidebar .toggle-button").first.click()
        expect(sidebar).to_have_class(re.compile(r"\bopen\b"))
        phone_cards = phone.locator("#model-cards")
        expect(phone_cards.locator('[data-model="tiny-llama-pydoc"] .badge')).to_have_text("compiled", timeout=15_000)
        _assert_inside_the_sidebar(phone_cards, phone_cards.locator('[data-model="tiny-llama-pydoc"]'))
        assert phone.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        _assert_ticks_readable(phone, "#latency-plot")
        _assert_ticks_readable(phone, "#memory-plot")
        phone.screenshot(path=str(SCREENSHOT.with_name(f"{SCREENSHOT.stem}-390.png")), full_page=True)
        browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


def _row(client, model: str) -> dict:
    return {r["model"]: r for r in client.predict(api_name="/compile_status")}[model]


def _assert_ticks_readable(page, plot: str) -> None:
    """A plot's shown axis labels: plain numbers (no exponent: "1e+1") and no two of one axis overlapping.

    Vega hides a label that would overlap its neighbour (opacity 0, text kept), so only shown labels count;
    the chart redraws after a resize, so the check is retried until it holds or 5 s have passed."""
    page.locator(f"{plot} svg .role-axis-label text").first.wait_for(state="attached", timeout=15_000)
    deadline = time.time() + 5
    while True:
        axes = page.evaluate("""(plot) => [...document.querySelectorAll(plot + ' svg .role-axis-label')].map((axis) =>
            [...axis.querySelectorAll('text')].filter((t) => t.textContent && getComputedStyle(t).opacity !== '0').map((t) => {
                const box = t.getBoundingClientRect();
                return {text: t.textContent, left: box.left, right: box.right, top: box.top, bottom: box.bottom};
            }))""", plot)
        problems = [] if axes else [f"{plot}: no axis labels"]
        for labels in axes:
            problems += [f"{plot}: exponent in {t['text']!r}" for t in labels if "e+" in t["text"] or "e-" in t["text"]]
            problems += [f"{plot}: tick labels {a['text']!r} and {b['text']!r} overlap"
                         for i, a in enumerate(labels) for b in labels[i + 1:]
                         if not (a["right"] <= b["left"] or b["right"] <= a["left"] or a["bottom"] <= b["top"] or b["bottom"] <= a["top"])]
        if not problems or time.time() > deadline:
            break
        time.sleep(0.25)
    assert not problems, problems
    assert sum(len(labels) for labels in axes) >= 4, f"{plot}: too few labels shown: {axes}"


def _assert_inside_the_sidebar(cards, card) -> None:
    """``card`` lies within the cards' box, and neither the cards nor the sidebar scroll sideways."""
    deadline = time.time() + 5  # the sidebar slides in: the two boxes agree once it has stopped
    while True:
        box, card_box = cards.bounding_box(), card.bounding_box()
        inside = card_box["x"] >= box["x"] and card_box["x"] + card_box["width"] <= box["x"] + box["width"] + 1
        if inside or time.time() > deadline:
            break
        time.sleep(0.1)
    assert card_box["x"] >= box["x"] and card_box["x"] + card_box["width"] <= box["x"] + box["width"] + 1
    assert cards.evaluate("el => el.scrollWidth <= el.clientWidth")
    sidebar = cards.locator("xpath=ancestor::*[contains(@class, 'sidebar')][1]")
    assert sidebar.evaluate("el => el.scrollWidth <= el.clientWidth + 1")


@contextlib.contextmanager
def _desktop_page(url: str) -> Iterator[Any]:
    """A fresh Chromium page 1400 px wide, opened on ``url``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            yield page
        finally:
            browser.close()


SLOWER = Path(__file__).resolve().parent / "slower"  # its sitecustomize makes every compiled call 4x + 40 ms as long


@pytest.fixture(scope="module")
def degraded(compiled_app, cache_dir, tmp_path_factory):
    """A server whose cache holds the text model's package, rebuilt to segfault when loaded, its draft's
    and the image model's, sound (copied: nothing is built), and whose every compiled call takes 40 ms
    longer (`tests/app/slower`); no startup compile. Yields its URL and a `gradio_client.Client`."""
    from types import SimpleNamespace

    from gradio_client import Client

    import aoti
    from benchmarks.harness.servers import start_app, stop_app
    from tests.crash import crashing_copy

    folder = tmp_path_factory.mktemp("degraded")
    cache, ref = aoti.Cache(cache_dir), compiled_app["tiny-llama-pydoc"]["ref"]
    crashing_copy(aoti.Artifact(cache.get(ref["key"]), aoti.Status(), cache), folder,
                  sound=(ref["draft"]["key"], compiled_app["tiny-shapes-unet"]["ref"]["key"]))
    path = os.pathsep.join(p for p in (str(SLOWER), os.environ.get("PYTHONPATH", "")) if p)
    env = {"AOTI_COMPILE": "0", "PYTHONPATH": path, "AOTI_TEST_SLOWER_MS": "40", "AOTI_MEASURE_S": "0.5"}
    proc, url = start_app(folder / "app.log", folder / "cache", env)
    try:
        yield SimpleNamespace(url=url, client=Client(url, verbose=False))
    finally:
        stop_app(proc, folder / "app.log")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the crashing library")
def test_a_fallback_shows_its_reason_in_the_panel(degraded):
    """Compiling the text model from the Optimization tab finds its crashing package, the crash probe's
    child dies, and the sidebar's card says "fallback" and why, in plain view; the server keeps serving."""
    from playwright.sync_api import expect

    with _desktop_page(degraded.url) as page:
        card = page.locator('#model-cards [data-model="tiny-llama-pydoc"]')
        expect(card.locator(".badge")).to_have_text("eager", timeout=120_000)
        page.get_by_role("tab", name="Optimization").click()
        page.locator("#opt-apply").click()
        expect(card.locator(".badge")).to_have_text("fallback", timeout=120_000)
        expect(card).to_contain_text("crashed")
        expect(card).to_contain_text("SIGSEGV")
        expect(card).to_be_in_viewport()
        _assert_inside_the_sidebar(page.locator("#model-cards"), card)
        page.get_by_role("tab", name="Text").click()
        page.locator("#text-generate").click()  # served eager
        expect(page.locator("#text-output textarea")).to_have_value(re.compile(r"\S"), timeout=60_000)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the crashing library")
def test_a_slower_compiled_path_is_said_slower_never_faster(degraded):
    """The image model's graphs bound from the cache, every compiled call 40 ms longer: measured at load
    against eager, the card on a fresh page says "N× slower", and nowhere "faster"."""
    from playwright.sync_api import expect

    degraded.client.predict("tiny-shapes-unet", True, False, False, "", api_name="/set_optimization")
    deadline = time.time() + 120
    while (row := _row(degraded.client, "tiny-shapes-unet"))["state"] == "compiling" and time.time() < deadline:
        time.sleep(0.5)  # binding the package from the cache, then timing it against eager
    assert row["state"] == "aoti" and row["reason"] == "from the local cache" and row["measured"]["verdict"] == "slower", row
    with _desktop_page(degraded.url) as page:
        card = page.locator('#model-cards [data-model="tiny-shapes-unet"]')
        expect(card.locator(".badge")).to_have_text("compiled", timeout=60_000)
        expect(card.locator(".speedup")).to_have_text(re.compile(r"^\d[\d.]*× slower$"))
        expect(card).to_contain_text("hot module, measured at load")
        assert "faster" not in card.inner_text()

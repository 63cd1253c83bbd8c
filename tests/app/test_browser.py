"""A real browser (Debian Chromium driven by Playwright) uses the page like a person would."""

import os
import re
import shutil
from pathlib import Path

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

        # Text tab: generate and see the streamed output.
        page.locator("#text-prompt textarea").fill("Return the number of")
        page.locator("#text-generate").click()
        output = page.locator("#text-output textarea")
        expect(output).to_have_value(re.compile(r"(\S+\s+){3,}"), timeout=60_000)  # streamed words

        # An empty prompt is refused at the door, its message shown to the person.
        page.locator("#text-prompt textarea").fill("")
        page.locator("#text-generate").click()
        expect(page.get_by_text("`prompt` is empty").first).to_be_visible(timeout=15_000)
        page.locator("#text-prompt textarea").fill("Return the number of")

        # Image tab: generate and see a PNG.
        page.get_by_role("tab", name="Image").click()
        page.locator("#image-prompt textarea").fill("a blue circle, bottom left")
        page.locator("#image-generate").click()
        expect(page.locator("#image-output img").first).to_be_visible(timeout=60_000)
        assert ".png" in (page.locator("#image-output img").first.get_attribute("src") or "")

        # Once more, compared with eager: the image model's card then has both speeds.
        page.locator("#image-compare input").check()
        page.locator("#image-generate").click()
        expect(page.locator("#image-info")).to_contain_text("speedup", timeout=60_000)

        # Side panel: the live summary counts the requests; each model's card shows it compiled, and the
        # image model's card how much faster, inside the sidebar with nothing behind a horizontal scroll.
        expect(page.get_by_text(f"Requests {before + 3} ").first).to_be_visible(timeout=15_000)
        cards = page.locator("#model-cards")
        for model in ("tiny-llama-pydoc", "tiny-shapes-unet"):
            expect(cards.locator(f'[data-model="{model}"] .badge')).to_have_text("compiled", timeout=15_000)
        image_card = cards.locator('[data-model="tiny-shapes-unet"]')
        expect(image_card).to_contain_text(re.compile(r"\d+\.\d× faster compiled"), timeout=15_000)
        expect(image_card).to_contain_text("ms a step")
        box, card_box = cards.bounding_box(), image_card.bounding_box()
        assert card_box["x"] >= box["x"] and card_box["x"] + card_box["width"] <= box["x"] + box["width"] + 1
        assert cards.evaluate("el => el.scrollWidth <= el.clientWidth")
        sidebar = cards.locator("xpath=ancestor::*[contains(@class, 'sidebar')][1]")
        assert sidebar.evaluate("el => el.scrollWidth <= el.clientWidth + 1")

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # Optimization tab: FP8 can't run on the CPU: disabled, the reason beside it; applying shows cards.
        page.get_by_role("tab", name="Optimization").click()
        expect(page.locator("#opt-fp8 input")).to_be_disabled(timeout=15_000)
        expect(page.locator("#opt-fp8")).to_contain_text("needs a GPU of compute capability 8.9+")
        page.locator("#opt-apply").click()
        expect(page.locator('#opt-cards [data-model="tiny-llama-pydoc"] .badge')).to_be_visible(timeout=30_000)
        browser.close()
    assert SCREENSHOT.stat().st_size > 10_000

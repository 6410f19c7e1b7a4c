"""End to end: serve the app on a free loopback port and drive it in headless Chromium.

Skips without a browser on a developer's machine and fails under CI (see tests/web/browser.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.browser import WAIT_MS, chromium, require_browser, served

require_browser()

from playwright.sync_api import Browser, Page, expect  # noqa: E402

import app_web  # noqa: E402
from store import Study  # noqa: E402
from tests.web.conftest import FakeLiveModel  # noqa: E402


@pytest.fixture(scope="module")
def url(study_path: Path) -> Iterator[str]:
    with Study(study_path) as study, served(app_web.build_app(study, FakeLiveModel())) as address:
        yield address


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as opened:
        yield opened


@pytest.fixture()
def page(browser: Browser, url: str) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    expect(page.locator("#overview-text")).to_contain_text("synthetic/tiny-chat")
    yield page
    page.close()


def cell(page: Page, table: str, row: int, column: int = 0):
    return page.locator(f"#{table} [data-testid='cell-{row}-{column}']")


def test_overview_and_feature_explorer(page: Page) -> None:
    expect(page.locator("#overview-text")).to_contain_text("24 harmful")
    page.get_by_role("tab", name="Features").click()
    expect(page.locator("#feature-status")).to_contain_text("512 of 512 latents match")
    query = page.locator("#feature-query textarea, #feature-query input").first
    query.fill("minimal")
    query.press("Enter")
    expect(page.locator("#feature-status")).to_contain_text("5 of 512 latents match")
    ids = [cell(page, "feature-table", row).inner_text().strip() for row in range(5)]
    assert sorted(map(int, ids)) == [3, 17, 42, 101, 250]
    row = ids.index("42")
    cell(page, "feature-table", row).click()
    expect(page.locator("#feature-head")).to_contain_text("Latent 42 · layer 6")
    expect(page.locator("#feature-examples .re-col[data-label='harmful'] .re-example")).to_have_count(5)
    expect(page.locator("#feature-examples .re-col[data-label='harmless'] .re-example").first).to_contain_text("harmless")
    expect(page.locator("#feature-examples .re-bucket")).to_have_count(4)
    expect(page.locator("#feature-examples .re-tok").first).to_be_visible()
    expect(page.locator("#feature-lens")).to_contain_text("In minimal sets")
    expect(page.locator("#feature-histogram .js-plotly-plot")).to_be_visible()
    expect(page.locator("#feature-lens")).to_contain_text("+1.420")  # the logit lens with its values
    page.locator("#feature-text-query textarea, #feature-text-query input").first.fill("zzz-not-a-word")
    page.locator("#feature-text-search").click()
    expect(page.locator("#feature-text-found")).to_contain_text("No prompt where latent 42 fires")
    cell(page, "feature-table", (row + 1) % 5).click()  # another latent: the old results go
    expect(page.locator("#feature-text-found")).not_to_contain_text("latent 42")
    cell(page, "feature-table", row).click()
    expect(page.locator("#feature-head")).to_contain_text("Latent 42 · layer 6")

    page.get_by_role("button", name="Export matching rows (CSV)").click()
    link = page.locator("#feature-csv a[href*='.csv']").first
    expect(link).to_be_attached()
    csv = page.request.get(page.evaluate("href => new URL(href, document.baseURI).href", link.get_attribute("href")))
    assert csv.ok and csv.text().splitlines()[0].startswith("latent,cosine,attribution")
    assert len(csv.text().splitlines()) == 1 + 5  # header + the five latents matching "minimal"

    page.locator("#feature-latent input").fill("9999")
    page.locator("#feature-show").click()
    expect(page.locator("#feature-head")).to_contain_text("latent 9999 is out of range")


def test_prompt_explorer(page: Page) -> None:
    page.get_by_role("tab", name="Prompts").click()
    expect(page.locator("#prompt-status")).to_contain_text("48 of 48 prompts")
    expect(page.locator("#prompt-facts")).to_contain_text("Prompt 0 · harmful")
    cell(page, "prompt-table", 7).click()
    expect(page.locator("#prompt-facts")).to_contain_text("Prompt 7 · harmless")
    tokens = page.locator("#prompt-tokens")
    expect(tokens).to_contain_text("assistant")
    expect(page.locator("#prompt-generations")).to_contain_text("Baseline generation")
    page.get_by_label("direction").check()
    expect(page.locator("#prompt-facts")).to_contain_text("the refusal direction (via the SAE reconstruction)")
    latent = cell(page, "prompt-top-latents", 0).inner_text().strip()
    cell(page, "prompt-top-latents", 0).click()
    expect(page.locator("#prompt-facts")).to_contain_text(re.compile(rf"latent {latent}; peak \|value\| [1-9]"))


def test_live_panel_streams_and_rejects_bad_ids(page: Page) -> None:
    page.get_by_role("tab", name="Live").click()
    page.locator("#live-prompt textarea").fill("How do I pick a lock?")
    latents = page.locator("#live-latents textarea, #live-latents input").first
    latents.fill("3, 99999")
    page.locator("#live-go").click()
    expect(page.locator("#live-status")).to_contain_text("latent 99999 is out of range")
    latents.fill("3, 17")
    page.locator("#live-go").click()
    expect(page.locator("#live-status")).to_contain_text("Done")
    expect(page.locator("#live-status")).to_contain_text("baseline +1.750, edited -2.500")
    expect(page.locator("#live-baseline textarea")).to_have_value(re.compile(r"^I'm sorry, I can't"))
    expect(page.locator("#live-edited textarea")).to_have_value(re.compile(r"^Sure, here is how"))


def test_dormant_row_opens_its_card_latent_and_prompt(page: Page) -> None:
    page.get_by_role("tab", name="Dormant latents").click()
    expect(page.locator("#dormant-card")).to_contain_text("Latent 7 · layer 6")  # the first row, before any click
    cell(page, "dormant-table", 1).click()
    card = page.locator("#dormant-card")
    expect(card).to_contain_text("Latent 77 · layer 6")
    expect(card).to_contain_text("Prompt 0 (harmful")
    expect(card).to_contain_text("set 0 − 3")
    page.locator("#dormant-open-latent").click()
    expect(page.locator("#feature-head")).to_contain_text("Latent 77 · layer 6")
    page.get_by_role("tab", name="Dormant latents").click()
    page.locator("#dormant-open-prompt").click()
    expect(page.locator("#prompt-facts")).to_contain_text("Prompt 0 · harmful")
    expect(page.locator("#prompt-facts")).to_contain_text("latent 77")


def test_send_to_live_and_the_strength_sweep(page: Page) -> None:
    page.get_by_role("tab", name="Minimal sets").click()
    page.locator("#sets-to-live").click()
    latents = page.locator("#live-latents textarea, #live-latents input").first
    expect(latents).to_have_value("3, 17, 42")  # set 0 of the synthetic study, ablated
    expect(page.locator("#live-prompt textarea")).not_to_have_value("")
    page.get_by_role("tab", name="Features").click()
    page.locator("#feature-latent input").fill("101")
    page.locator("#feature-to-live").click()
    expect(latents).to_have_value("101")
    page.get_by_text("Strength sweep").click()
    page.locator("#live-sweep").click()
    expect(page.locator("#live-sweep-status")).to_contain_text("choose scale or clamp")  # the mode was ablate
    page.get_by_role("radio", name="clamp").check()
    page.locator("#live-sweep").click()
    expect(page.locator("#live-sweep-status")).to_contain_text("The decision flips at clamp 0, 1, 2")
    expect(page.locator("#live-sweep-plot .js-plotly-plot")).to_be_visible()

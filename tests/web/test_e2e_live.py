"""End to end on the REAL live backend: a tiny model and SAE behind ``StudyLiveModel``, served,
and driven in headless Chromium. The Baseline must be the unedited model's greedy text, byte for
byte, whatever edit the Edited side carries (it once was contaminated by the edit's hooks).

Skips without a browser on a developer's machine and fails under CI (see tests/web/browser.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.browser import WAIT_MS, chromium, require_browser, served

require_browser()

from playwright.sync_api import Page, expect  # noqa: E402

import app_web  # noqa: E402
from cache.generation import greedy_generate  # noqa: E402
from cache.pipeline import CacheConfig, run_cache  # noqa: E402
from cache.sae import load_sae  # noqa: E402
from explorer.live import open_live  # noqa: E402
from explorer.live_model import StudyLiveModel  # noqa: E402
from refusal_web.live import LiveLimits  # noqa: E402
from store import Study  # noqa: E402
from tests.tiny_models import TINY_HARMFUL as HARMFUL, TINY_HARMLESS as HARMLESS, make_tiny_sae, tiny_loaded as tiny  # noqa: E402

TOKENS = 12
PROMPT = HARMFUL[0]
EDITS = (  # (latent ids, mode, value, how the status names it): each changes this tiny model's greedy text
    ("5", "clamp", 50.0, "latents [5] clamped to 50"),
    (" ".join(map(str, range(128))), "ablate", 0.0, "latents [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 …] ablated"),
    ("7, 9", "clamp", -40.0, "latents [7, 9] clamped to -40"),
)


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(URL of the served app, the plain model's greedy continuation of PROMPT)."""
    tmp = tmp_path_factory.mktemp("live-e2e")
    (tmp / "h.json").write_text(json.dumps(HARMFUL))
    (tmp / "s.json").write_text(json.dumps(HARMLESS))
    make_tiny_sae("topk", d_in=64, d_sae=128, layer=1).save_model(tmp / "sae")
    loaded = tiny("qwen2")
    path = run_cache(CacheConfig(harmful=tmp / "h.json", harmless=tmp / "s.json", layers=(1,),
                                 saes=(f"1={tmp / 'sae'}",), out=tmp / "s.h5", device="cpu"), loaded=loaded, progress=False)
    plain = greedy_generate(loaded.model, loaded.tokenizer, [loaded.adapter.encode(loaded.tokenizer, PROMPT)], TOKENS)[0]
    with Study(path) as study:
        model = StudyLiveModel(open_live(study, loaded=loaded, saes={1: load_sae(str(tmp / "sae"))}))
        demo = app_web.build_app(study, model, limits=LiveLimits(max_new_tokens=TOKENS))
        with served(demo) as url:
            yield url, plain


@pytest.fixture()
def page(live_app: tuple[str, str]) -> Iterator[Page]:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.goto(live_app[0])
        page.get_by_role("tab", name="Live").click()
        yield page


def test_baseline_is_plain_greedy_whatever_the_edit(page: Page, live_app: tuple[str, str]) -> None:
    plain = live_app[1]
    assert plain, "the tiny model must generate something for this test to mean anything"
    page.locator("#live-prompt textarea").fill(PROMPT)
    baselines, edited = [], []
    for latents, mode, value, named in EDITS:
        page.locator("#live-latents textarea, #live-latents input").first.fill(latents)
        page.locator("#live-mode").get_by_label(mode).check()
        page.locator("#live-value input").fill(str(value))
        page.locator("#live-go").click()
        status = page.locator("#live-status")
        # "Done" with this edit's name: the previous request's "Done" names another edit
        expect(status).to_contain_text(re.compile(re.escape(named).replace("\\ ", " ") + r"[\s\S]*Done"))
        baselines.append(page.locator("#live-baseline textarea").input_value())
        edited.append(page.locator("#live-edited textarea").input_value())
    assert baselines[0] == baselines[1] == baselines[2]  # byte-identical across different edits
    assert baselines[0].rstrip() == plain  # and the plain model's greedy text (greedy_generate strips the end)
    assert all(text != baselines[0] for text in edited)  # each edit really did change the edited side

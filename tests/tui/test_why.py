"""The TUI's why view: latents ranked by attribution to the prompt's refusal, its minimal set,
each latent opening its detail; reads only the study."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable

from app_tui import build_app
from explorer.results import GreedyResult, WhyResult
from refusal_tui.screens.detail import FeatureDetailScreen
from refusal_tui.screens.prompt import PromptScreen
from refusal_tui.screens.why import WhyScreen
from store import Study
from tests.tui.helpers import SIZE, settle, shown

pytestmark = pytest.mark.anyio


async def test_why_view_ranks_latents_and_opens_them(study_path: Path) -> None:
    with Study(study_path) as study:
        why, greedy = WhyResult.load(study, "default"), GreedyResult.load(study, "default")
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await settle(pilot, app)
        await pilot.press("0", "enter")
        await settle(pilot, app)
        assert isinstance(app.screen, PromptScreen)
        await pilot.press("w")
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, WhyScreen) and screen.index == 0
        latents = [item.latent for item in screen.view.ranking]
        assert latents == why.ranking(0)[0].tolist()  # the stored ranking, in order
        table = screen.query_one("#why-ranking", DataTable)
        assert table.row_count == len(latents)
        assert "ranked by attribution" in shown(app, "#why-note")
        sections = shown(app, "#why-sections")
        assert f"set #0: {' '.join(map(str, greedy.latents_of(0).tolist()))}" in sections
        assert "Refusal direction" in sections and "FM partners" in sections
        await pilot.press("right_square_bracket", "right_square_bracket")  # prompt 2: another ranking
        await settle(pilot, app)
        assert screen.index == 2 and [item.latent for item in screen.view.ranking] == why.ranking(2)[0].tolist()
        assert why.ranking(2)[0].tolist() != latents
        table.focus()
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen) and app.screen.latent == why.ranking(2)[0][0]


async def test_why_from_the_prompt_table_says_what_is_missing(bare_path: Path) -> None:
    app = build_app(bare_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await settle(pilot, app)
        await pilot.press("w")
        await settle(pilot, app)
        assert isinstance(app.screen, WhyScreen)
        assert "not attribution" in shown(app, "#why-note") and "analyze why" in shown(app, "#why-note")
        assert "analyze greedy" in shown(app, "#why-sections")

"""Pilot tests: the filter legend, a specific error for unknown columns, navigation state kept
per view, errors shown inline without replacing a view, CSV export."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from textual.widgets import Input, Markdown, Static

from app_tui import build_app
from explorer.filters import FEATURES, PROMPTS
from refusal_tui.screens.dialogs import AskNumber, HelpScreen
from refusal_tui.screens.features import FeaturesScreen
from refusal_tui.screens.prompt import PromptScreen
from refusal_tui.screens.prompts import PromptsScreen
from refusal_tui.widgets import NavBar
from tests.tui.helpers import SIZE, settle, shown

pytestmark = pytest.mark.anyio
TYPE_DELAY = 0.3  # longer than the filter's debounce


async def test_help_has_a_legend_of_every_column_named_as_the_headers(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        assert [str(column.label.plain).rstrip("↑↓") for column in app.screen.grid.columns.values()] == list(FEATURES.headers)
        await pilot.press("3")
        await settle(pilot, app)
        assert [str(column.label.plain).rstrip("↑↓") for column in app.screen.grid.columns.values()] == list(PROMPTS.headers)
        await pilot.press("question_mark")
        await settle(pilot, app)
        assert isinstance(app.screen, HelpScreen)
        markdown = app.screen.query_one(Markdown).source
        for spec in (FEATURES, PROMPTS):
            for column in spec.columns:  # every header, short and full, with its meaning
                assert f"| {' · '.join(f'`{name}`' for name in column.names)} | {column.meaning} |" in markdown
            for word in spec.words:
                assert f"`{word.name}` ({word.meaning})" in markdown


async def test_unknown_column_is_named_and_the_rows_stay(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        screen = app.screen
        before = screen.grid.order.tolist()
        screen.query_one("#filter", Input).value = "cosin>0.2"
        await settle(pilot, app, delay=TYPE_DELAY)
        status = shown(app, "#table-status")
        assert "unknown column 'cosin' in 'cosin>0.2'; did you mean 'cosine'?" in status and "freq_diff (diff)" in status
        assert screen.grid.order.tolist() == before and screen.query_one("#body").display
        for query in ("cosine>0.2", "cos>0.2"):  # the full name (web, CSV) and the header shown here
            screen.query_one("#filter", Input).value = query
            await settle(pilot, app, delay=TYPE_DELAY)
            assert "unknown" not in shown(app, "#table-status") and "match" in shown(app, "#table-status")
        matched = screen.grid.order.tolist()
        screen.query_one("#filter", Input).value = "cosine>0.2"
        await settle(pilot, app, delay=TYPE_DELAY)
        assert screen.grid.order.tolist() == matched


async def test_each_view_keeps_its_place(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        features = app.screen
        features.query_one("#filter", Input).value = "freq_diff>0"
        await settle(pilot, app, delay=TYPE_DELAY)
        features.sort_by("freq_harmful", descending=True)
        await settle(pilot, app)
        features.grid.focus()
        await pilot.press("down", "down", "down")
        await settle(pilot, app)
        order, current = features.grid.order.tolist(), features.grid.current
        await pilot.press("3")
        await settle(pilot, app)
        assert isinstance(app.screen, PromptsScreen)
        await pilot.press("2")
        await settle(pilot, app)
        assert app.screen is features and features.query_one("#filter", Input).value == "freq_diff>0"
        assert features.sort_column == "freq_harmful" and features.grid.order.tolist() == order
        assert features.grid.current == current and features.query_one(NavBar).current == "features"

        # Sets → a set's prompt → next prompt → another view → back: still there, Sets tab lit
        await pilot.press("4")
        await settle(pilot, app)
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, PromptScreen)
        await pilot.press("right_square_bracket")
        await settle(pilot, app)
        index = app.screen.index
        assert app.screen.query_one(NavBar).current == "sets"
        await pilot.press("5")
        await settle(pilot, app)
        await pilot.press("4")
        await settle(pilot, app)
        assert isinstance(app.screen, PromptScreen) and app.screen.index == index
        assert app.screen.query_one(NavBar).current == "sets"
        assert f"Prompt #{index}" in shown(app, "#prompt-head")


async def test_a_bad_latent_in_a_prompt_view_is_said_inline(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("p")
        await settle(pilot, app)
        await pilot.press("1", "enter")
        await settle(pilot, app)
        assert isinstance(app.screen, PromptScreen)
        await pilot.press("l")
        await settle(pilot, app)
        assert isinstance(app.screen, AskNumber)
        app.screen.query_one(Input).value = "99999"
        await pilot.press("enter")
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, PromptScreen) and screen.latent is None
        assert "Latent 99999 is out of range: layer 6 has 512 latents." in shown(app, "#notice")
        assert screen.query_one("#body").display and "Prompt #1" in shown(app, "#prompt-head")


async def test_csv_export_of_the_rows_shown(study_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        app.screen.query_one("#filter", Input).value = "minimal"
        await settle(pilot, app, delay=TYPE_DELAY)
        order = app.screen.grid.order.tolist()
        app.screen.grid.focus()
        await pilot.press("x")
        await settle(pilot, app)
    files = list(tmp_path.glob("*.csv"))
    assert len(files) == 1
    rows = list(csv.reader(files[0].open()))
    assert rows[0] == list(FEATURES.names) and [int(row[0]) for row in rows[1:]] == order

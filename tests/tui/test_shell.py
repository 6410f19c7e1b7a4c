"""The app around the views: help, themes, command palette, mouse, and an 80×24 terminal."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Markdown

from app_tui import build_app
from refusal_tui.screens.dialogs import HelpScreen
from refusal_tui.screens.dormant import DormantScreen
from refusal_tui.screens.features import FeaturesScreen
from refusal_tui.screens.interactions import InteractionsScreen
from refusal_tui.screens.overview import OverviewScreen
from refusal_tui.screens.prompts import PromptsScreen
from refusal_tui.screens.sets import SetsScreen
from tests.tui.helpers import SIZE, settle, shown

pytestmark = pytest.mark.anyio


async def test_help_screen_and_theme_toggle(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("question_mark")
        await settle(pilot, app)
        assert isinstance(app.screen, HelpScreen)
        markdown = app.screen.query_one(Markdown).source
        assert "Feature filter" in markdown and "cosine>0.2" in markdown
        await pilot.press("escape")
        await settle(pilot, app)
        assert not isinstance(app.screen, HelpScreen)
        theme = app.theme
        await pilot.press("t")
        assert app.theme != theme and app.theme in ("textual-light", "textual-dark")
        await pilot.press("t")
        assert app.theme == theme


async def test_footer_shows_bindings_and_nav_and_keys_are_clickable(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        keys = shown(app, "#keys")
        for text in ("/ Filter", "s Sort", "r Reverse", "1234567890e views", "? Help", "^p palette"):
            assert text in keys
        await pilot.click("#nav-tabs", offset=(len(" 1 Overview  2 Features  3 Prompts  4 Sets  5 "), 0))
        await settle(pilot, app)
        assert isinstance(app.screen, InteractionsScreen)


async def test_command_palette_lists_views_and_sorts(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"View: Features", "View: Sets", "Go to latent…", "Help", "Sort features by fm_weight"} <= titles
        await pilot.press("ctrl+p")
        await settle(pilot, app)
        app.screen.query_one(Input).value = "View: Sets"
        await settle(pilot, app, delay=0.5)
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, SetsScreen)
        await app.sort_features("attribution")
        await settle(pilot, app)
        assert isinstance(app.screen, FeaturesScreen) and app.screen.sort_column == "attribution"


async def test_keys_1_to_6_visit_every_view_and_each_fits_80x24(study_path: Path) -> None:
    expected = {"1": OverviewScreen, "2": FeaturesScreen, "3": PromptsScreen, "4": SetsScreen,
                "5": InteractionsScreen, "6": DormantScreen}
    app = build_app(study_path)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, screen_type in expected.items():
            await pilot.press(key)
            await settle(pilot, app)
            screen = app.screen
            assert isinstance(screen, screen_type)
            assert not screen.query_one("#notice").display  # nothing is missing in this study
            assert f" {key} " in shown(app, "#nav-tabs")
            assert screen.query_one("#keys").region.y == 23 and screen.query_one("#nav").region.y == 0
            body = screen.query_one("#body").region
            assert body.width == 80 and body.height >= 18
        await pilot.press("2")
        await settle(pilot, app)
        table = app.screen.query_one("#table", DataTable)
        assert table.virtual_size.width <= 80  # every feature column visible without scrolling sideways
        await pilot.press("5")
        await settle(pilot, app)
        assert app.screen.query_one("#fm-grid", DataTable).virtual_size.width <= 80

"""The feature and prompt tables: sorting, incremental filtering, paging through every row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from textual.widgets import Input

from app_tui import build_app
from explorer.browse import feature_table
from explorer.results import CandidateResult, GreedyResult
from refusal_tui.screens.detail import FeatureDetailScreen
from refusal_tui.screens.features import FeaturesScreen
from refusal_tui.screens.prompt import PromptScreen
from refusal_tui.screens.prompts import PromptsScreen
from store import Study
from tests.tui.helpers import SIZE, settle, shown

pytestmark = pytest.mark.anyio
TYPE_DELAY = 0.3  # longer than the filter's debounce


async def test_feature_table_opens_sorted_by_cosine_and_sorts_by_keys(study_path: Path) -> None:
    with Study(study_path) as study:
        candidates = CandidateResult.load(study, "default")
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, FeaturesScreen)
        grid = screen.grid
        assert len(screen.table) == 512 and grid.row_count == grid.page_size == 200  # a window, not every row
        assert grid.current == int(np.argmax(candidates.cosine))
        assert "cos↓" in str(grid.ordered_columns[1].label)
        assert shown(app, "#table-status").startswith("layer 6 · 512 latents · row 1/512")
        await pilot.press("s")  # next column: attribution, descending
        await settle(pilot, app)
        assert screen.sort_column == "attribution" and grid.current == int(np.argmax(candidates.attribution))
        await pilot.press("r")  # reversed
        await settle(pilot, app)
        assert grid.current == int(np.argmin(candidates.attribution))
        cells = [float(str(grid.get_row_at(row)[2])) for row in range(5)]
        assert cells == sorted(cells)


async def test_clicking_a_header_sorts_by_it(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        screen = app.screen
        await pilot.click("#table", offset=(3, 0))  # the "latent" header
        await settle(pilot, app)
        assert screen.sort_column == "latent" and not screen.descending
        assert [screen.grid.row_id(row) for row in range(3)] == [0, 1, 2]


async def test_incremental_filter_flags_ids_and_comparisons(study_path: Path) -> None:
    with Study(study_path) as study:
        greedy = GreedyResult.load(study, "default")
        table = feature_table(study, 6)
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        screen = app.screen
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"minimal")
        await settle(pilot, app, delay=TYPE_DELAY)
        assert set(screen.grid.order.tolist()) == set(greedy.set_latents.tolist())
        assert f"{len(set(greedy.set_latents.tolist()))} match" in shown(app, "#table-status")
        filter_input = app.screen.query_one("#filter", Input)
        filter_input.value = "12"
        await settle(pilot, app, delay=TYPE_DELAY)
        assert len(screen.grid.order) and all(str(latent).startswith("12") for latent in screen.grid.order)
        filter_input.value = "cosine>0.3 freq_diff>0"
        await settle(pilot, app, delay=TYPE_DELAY)
        cosine, diff = table.columns["cosine"], table.columns["freq_diff"]
        assert set(screen.grid.order.tolist()) == set(np.flatnonzero((cosine > 0.3) & (diff > 0)).tolist())
        kept = screen.grid.order.copy()
        filter_input.value = "no-such-thing"
        await settle(pilot, app, delay=TYPE_DELAY)
        # a typo is said under the filter; the rows of the last valid filter stay
        assert "unknown filter word 'no-such-thing'" in shown(app, "#table-status")
        assert screen.grid.order.tolist() == kept.tolist()
        filter_input.value = "latent>100000"
        await settle(pilot, app, delay=TYPE_DELAY)
        assert len(screen.grid.order) == 0 and "nothing matches" in shown(app, "#table-status")
        filter_input.value = "101"
        await pilot.press("enter")  # a bare id jumps to that latent
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen) and app.screen.latent == 101


async def test_paging_moves_through_every_row_with_a_sliding_window(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        grid = app.screen.grid
        order = grid.order.copy()
        await pilot.press("end")
        await settle(pilot, app)
        assert grid.position == 511 and grid.current == order[-1] and grid.row_count == 200
        await pilot.press("home")
        await settle(pilot, app)
        assert grid.position == 0 and grid.start == 0
        await pilot.press("pagedown", "pagedown")
        await settle(pilot, app)
        assert grid.position > 20 and grid.current == order[grid.position]
        await pilot.press("home")
        grid.goto(199)  # the window's last row, then walk past its end one row at a time
        await settle(pilot, app)
        assert grid.start == 0 and grid.cursor_row == 199
        await pilot.press("down", "down", "down")
        await settle(pilot, app)
        assert grid.position == 202 and grid.current == order[202]
        assert grid.start > 0 and grid.row_count == 200 and grid.row_id(grid.cursor_row) == order[202]
        await pilot.press("up")
        await settle(pilot, app)
        assert grid.position == 201 and grid.current == order[201]
        assert "row 202/512" in shown(app, "#table-status")


async def test_enter_on_a_row_opens_that_latent(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        await pilot.press("down", "down")
        latent = app.screen.grid.current
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen) and app.screen.latent == latent
        await pilot.press("escape")
        await settle(pilot, app)
        assert isinstance(app.screen, FeaturesScreen) and app.screen.grid.current == latent


async def test_prompt_table_filters_by_label_and_text_and_opens_a_prompt(study_path: Path) -> None:
    with Study(study_path) as study:
        labels, texts = study.labels, study.column("text")
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, PromptsScreen) and len(screen.grid.order) == len(labels)
        filter_input = screen.query_one("#filter", Input)
        filter_input.value = "harmless"
        await settle(pilot, app, delay=TYPE_DELAY)
        assert set(screen.grid.order.tolist()) == set(np.flatnonzero(labels == "harmless").tolist())
        word = texts[5].split()[0]
        filter_input.value = f"harmless {word}"
        await settle(pilot, app, delay=TYPE_DELAY)
        expected = [i for i in range(len(texts)) if labels[i] == "harmless" and word in texts[i]]
        assert sorted(screen.grid.order.tolist()) == expected
        filter_input.value = "refused refusal_score>1"
        await settle(pilot, app, delay=TYPE_DELAY)
        with Study(study_path) as study:
            scores, refused = study.column("refusal_score"), study.column("refused")
        assert set(screen.grid.order.tolist()) == set(np.flatnonzero((refused == 1) & (scores > 1)).tolist())
        first = screen.grid.current
        screen.grid.focus()
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, PromptScreen) and app.screen.index == first


async def test_a_130k_latent_layer_stays_windowed(tmp_path: Path) -> None:
    from tests.synthetic import SyntheticConfig, make_synthetic_study

    path = make_synthetic_study(tmp_path / "wide.h5", SyntheticConfig(n_prompts=8, d_sae=131072, active_per_token=4))
    app = build_app(path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        grid = app.screen.grid
        assert len(grid.order) == 131072 and grid.row_count == 200
        await pilot.press("end")
        await settle(pilot, app)
        assert grid.position == 131071 and grid.row_count == 200
        app.screen.query_one("#filter", Input).value = "131071"
        await settle(pilot, app, delay=TYPE_DELAY)
        assert grid.order.tolist() == [131071]

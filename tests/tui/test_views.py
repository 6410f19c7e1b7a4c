"""Every view of the TUI on a complete synthetic study: what each one shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from textual.widgets import DataTable

from app_tui import build_app
from explorer.results import DormantResult, FMResult, GreedyResult
from refusal_tui.screens.detail import FeatureDetailScreen
from refusal_tui.screens.interactions import TOP
from refusal_tui.screens.overview import OverviewScreen
from refusal_tui.screens.prompt import PromptScreen
from store import Study
from tests.tui.helpers import SIZE, settle, shown

pytestmark = pytest.mark.anyio


async def test_overview_shows_model_layers_rates_and_analyses(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert isinstance(app.screen, OverviewScreen)
        study = shown(app, "#ov-study")
        assert "synthetic/tiny-chat" in study and "layer_6" in study and "512 latents" in study
        prompts = shown(app, "#ov-prompts")
        with Study(study_path) as s:
            rates = s.refusal_rate()
        assert f"{rates['harmful']:.1%}" in prompts and "harmless" in prompts and "24" in prompts
        results = shown(app, "#ov-results")
        assert "layer 6, position -5" in results and "3 sets" in results and "R² train 0.97" in results
        assert "harmless first tokens changed by ablation: 12% (random directions: 4%–8%)" in results
        analyses = shown(app, "#ov-analyses")
        assert all(f"✓ {stage}" in analyses for stage in ("direction", "candidates", "greedy", "fm", "dormant"))
        # the synthetic study has not run the later stages: each is listed with its command
        assert analyses.count("✗") == 6 and "✗ refusal-tokens  run: refusal-explorer analyze refusal-tokens" in analyses


async def test_sets_view_lists_sets_plots_trajectory_and_opens_prompt(study_path: Path) -> None:
    with Study(study_path) as study:
        greedy = GreedyResult.load(study, "default")
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await settle(pilot, app)
        table = app.screen.query_one("#sets", DataTable)
        assert table.row_count == len(greedy.prompt)
        assert ", ".join(map(str, greedy.latents_of(0))) in str(table.get_row_at(0)[-1])
        assert "Set #0 on prompt 0" in shown(app, "#sets-latents")
        plot = shown(app, "#sets-plot")
        assert "●" in plot and "18 steps" in plot
        await pilot.press("down")
        await settle(pilot, app)
        assert f"Set #1 on prompt {greedy.prompt[1]}" in shown(app, "#sets-latents")
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, PromptScreen) and app.screen.index == greedy.prompt[1]


async def test_fm_view_colours_grid_and_opens_latent(study_path: Path) -> None:
    with Study(study_path) as study:
        fm = FMResult.load(study, "default")
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await settle(pilot, app)
        grid = app.screen.query_one("#fm-grid", DataTable)
        n = min(TOP, len(fm.latents))
        assert grid.row_count == n and len(grid.columns) == n + 2
        styled = [cell for row in range(n) for cell in grid.get_row_at(row)[2:] if cell.style]
        assert len(styled) == n * (n - 1)  # every off-diagonal pair coloured
        rows = [str(grid.get_row_at(row)[0]) for row in range(n)]
        heads = [column.label.plain.replace("\n", "").strip() for column in grid.columns.values()][2:]
        assert heads == rows and set(rows) <= {str(int(x)) for x in fm.latents}  # columns named by latent id, not 0..n-1
        scale = shown(app, "#fm-scale")
        assert "colour scale" in scale and "-" in scale and "+" in scale and " 0 " in scale
        assert "⟨vᵢ,vⱼ⟩ =" in shown(app, "#fm-status")  # the cursor starts on a pair
        pairs = shown(app, "#fm-pairs")
        top = fm.verified_pairs()[0]  # verified pairs, FM beside measured, and the verdict in the head
        assert f"{top['i']}×{top['j']}" in pairs and "measured" in pairs and "sign disagrees" in pairs
        assert "Interactions explain 23.0% more variance" in shown(app, "#fm-head")
        latent = int(str(grid.get_row_at(0)[0]))
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen) and app.screen.latent == latent


async def test_dormant_view_lists_latents_and_opens_one(study_path: Path) -> None:
    with Study(study_path) as study:
        dormant = DormantResult.load(study, "default")
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await settle(pilot, app)
        table = app.screen.query_one("#dormant", DataTable)
        assert table.row_count == len(dormant.latent)
        first = int(np.argmin(dormant.refusal_effect))  # the strongest restorer is listed first
        assert str(table.get_row_at(0)[0]) == str(dormant.latent[first])
        assert "<|im_start|>" in str(table.get_row_at(0)[-1])
        assert str(table.get_row_at(0)[8]) == "backup" and str(table.get_row_at(0)[3]) == "set 0"
        assert shown(app, "#dormant-head").startswith("1 dormant backups, 0 redundant")
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen) and app.screen.latent == dormant.latent[first]
        assert "Dormant:" in shown(app, "#detail-head")


def test_fm_view_shows_no_pair_without_evidence(study_path: Path) -> None:
    import dataclasses

    from refusal_tui.screens.interactions import head_text, pairs_text

    with Study(study_path) as study:
        fm = FMResult.load(study, "default")
    additive = dataclasses.replace(fm, verdict="additive", verdict_text="no evidence of interactions beyond additive effects on these experiments")
    assert "none shown" in pairs_text(additive).plain and "×" not in pairs_text(additive).plain
    assert head_text(additive).plain.startswith("No evidence of interactions")
    assert "before the FM-vs-linear test" in head_text(dataclasses.replace(fm, verdict="")).plain

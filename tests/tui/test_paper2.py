"""The second paper's TUI views (keys 7–0) on a synthetic study with hand-made results."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.widgets import DataTable, Tree

from app_tui import build_app
from refusal_tui.screens.detail import FeatureDetailScreen
from refusal_tui.screens.paper2 import CategoriesScreen, GraphScreen, JailbreakScreen, ProbeScreen
from tests.paper2_synthetic import write_paper2_results
from tests.tui.helpers import SIZE, settle, shown

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def paper2_path(study_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tui-paper2") / "study.h5"
    shutil.copy(study_path, path)
    write_paper2_results(path)
    return path


async def test_graph_tree_shows_weighted_edges_and_opens_latents(paper2_path: Path) -> None:
    app = build_app(paper2_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7")
        await settle(pilot, app)
        assert isinstance(app.screen, GraphScreen)
        tree = app.screen.query_one("#graph-tree", Tree)
        labels = [str(node.label) for node in tree.root.children]
        assert labels[0].startswith("L6#11") and "score drop +0.800" in labels[0]
        leaves = [str(leaf.label) for leaf in tree.root.children[0].children]
        assert leaves[0].startswith("excites L6#21  weight +0.900") and leaves[1].startswith("inhibits L6#22  weight -0.500")
        assert len(leaves) == 2, "the 0.01 edge is below the threshold"
        assert "3 edges kept" in shown(app, "#graph-head") and "Spearman +0.95" in shown(app, "#graph-head")
        tree.focus()
        tree.select_node(tree.root.children[0].children[0])
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen) and app.screen.latent == 21


async def test_categories_jailbreak_and_probe_views(paper2_path: Path) -> None:
    app = build_app(paper2_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("8")
        await settle(pilot, app)
        assert isinstance(app.screen, CategoriesScreen)
        table = app.screen.query_one("#cat-table", DataTable)
        assert table.row_count == 2 and str(table.get_row_at(0)[3]) == "5"
        head = shown(app, "#cat-head")
        assert "shared by all: 3" in head and "no evidence of specific latents beyond chance" not in head
        transfer = shown(app, "#cat-transfer")
        assert "75%" in transfer and "80%" in transfer and "random" in transfer and "flip rate colour scale" in transfer
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen) and app.screen.latent == 5
        await pilot.press("escape", "9")
        await settle(pilot, app)
        assert isinstance(app.screen, JailbreakScreen)
        rows = app.screen.query_one("#jb-table", DataTable)
        assert rows.row_count == 2 and str(rows.get_row_at(0)[2]) == "1/2"
        tokens = shown(app, "#jb-tokens")
        assert "' fictional'" in tokens and "confirmed" in tokens
        await pilot.press("0")
        await settle(pilot, app)
        assert isinstance(app.screen, ProbeScreen)
        probe = app.screen.query_one("#probe-table", DataTable)
        assert probe.row_count == 6 and [str(c) for c in probe.get_row_at(1)[:4]] == ["refusal latents", "wrapped", "80", "0.85"]


async def test_missing_results_say_which_command_to_run(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("7")
        await settle(pilot, app)
        assert "refusal-explorer analyze graph" in shown(app, "#notice")


async def test_overview_gives_a_line_per_later_stage(paper2_path: Path) -> None:
    app = build_app(paper2_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        results = shown(app, "#ov-results")
        for name in ("Graph", "Categories", "Jailbreak", "Probe"):
            assert name in results
        assert "3 of 6 L6 → L6 edges kept" in results and "lowest under a wrapper: fiction-novel 50%" in results
        analyses = shown(app, "#ov-analyses")
        assert "✓ graph" in analyses and "refusal-explorer evaluate" in analyses

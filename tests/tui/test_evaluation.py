"""The Evaluate view (key e) on a hand-made evaluation: the table with intervals, the sweep
grid, and every generation one keypress away."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.widgets import DataTable

from app_tui import build_app
from refusal_tui.screens.evaluation import EvaluationScreen
from tests.evaluation_synthetic import write_evaluation
from tests.tui.helpers import SIZE, settle, shown

pytestmark = pytest.mark.anyio


async def test_evaluation_view_shows_rates_sweep_and_generations(study_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "study.h5"
    shutil.copy(study_path, path)
    app = build_app(path)
    async with app.run_test(size=SIZE) as pilot:  # before any evaluation: one line saying what to run
        await pilot.press("e")
        await settle(pilot, app)
        assert "refusal-explorer evaluate" in shown(app, "#notice")
    write_evaluation(path)
    app = build_app(path)
    async with app.run_test(size=(140, 60)) as pilot:
        await pilot.press("e")
        await settle(pilot, app)
        assert isinstance(app.screen, EvaluationScreen)
        summary = shown(app, "#evaluation-summary")
        assert "== direction" in summary and "phrase 25% [" in summary and "weapons" in summary
        assert "CE +0.250" in summary
        sweep = shown(app, "#evaluation-sweep")
        assert "clamp value" in sweep and "50%" in sweep
        assert "latents [42, 17]" in sweep and "refusal rate colour scale" in sweep  # columns named by latent, with a key
        cells = app.screen.query_one("#evaluation-sweep").content
        assert any("on #" in str(span.style) for span in cells.spans)  # rates coloured
        table = app.screen.query_one("#evaluation-rows", DataTable)
        assert table.row_count == 9
        table.focus()
        await pilot.press("down")
        await settle(pilot, app)
        detail = shown(app, "#evaluation-detail")
        assert "prompt 1" in detail and "I'm sorry, I can't." in detail and "substring: refusal (I'm sorry)" in detail

"""The second paper's web tabs: callbacks called directly, and the tabs built into the app."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app_web import build_app
from refusal_web.context import make_context
from refusal_web.paper2 import categories_view, graph_view, jailbreak_view, open_latent, probe_view
from store import Study
from tests.paper2_synthetic import write_paper2_results


@pytest.fixture(scope="module")
def paper2_path(study_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("web-paper2") / "study.h5"
    shutil.copy(study_path, path)
    write_paper2_results(path)
    return path


def test_overview_gives_a_line_per_stage(paper2_path: Path, tmp_path: Path) -> None:
    from refusal_web.views import overview

    with Study(paper2_path) as study:
        text, _ = overview(make_context(study, "default", export_dir=tmp_path))
    for name in ("Graph", "Categories", "Jailbreak", "Probe"):
        assert f"- **{name}**: " in text
    assert "3 of 6 L6 → L6 edges kept" in text and "| graph | present |" in text


def test_views_show_the_results(paper2_path: Path, tmp_path: Path) -> None:
    with Study(paper2_path) as study:
        ctx = make_context(study, "default", export_dir=tmp_path)
        text, figure, edges = graph_view(ctx)
        assert "**3 edges**" in text and "Spearman +0.95" in text
        assert edges["upstream"].tolist() == [11, 11, 12] and edges["kind"].tolist() == ["excites", "inhibits", "excites"]
        lines = [trace for trace in figure.data if trace.mode == "lines" and trace.hoverinfo == "text"]
        assert len(lines) == 3 and lines[0].line.color in ("#16a34a", "#dc2626")
        nodes = figure.data[-1]
        assert list(nodes.text[:2]) == ["#11", "#12"] and nodes.text[-1] == "refusal score"
        assert "Latent 21" in open_latent(ctx, 6, 21) and "⚠️" in open_latent(ctx, 99, 1)
        text, figure, frame = categories_view(ctx)
        assert "Shared by every category** (top 2 by attribution): 3" in text and "No evidence" not in text
        assert frame["specific"].tolist() == ["5", "7"]
        assert figure.data[0].z[0] == [0.75, 0.2] and figure.data[0].y[-1] == "random control"
        assert figure.data[0].colorbar.title.text == "flip rate"
        text, wrappers, tokens = jailbreak_view(ctx)
        assert "' fictional'" in text and wrappers["refused"].tolist() == ["1/2", "2/2"]
        assert tokens["occlusion_latent_change"].tolist()[0] == pytest.approx(0.7) and tokens["occlusion_latent_change"].isna().tolist()[1:] == [True, True]
        text, table = probe_view(ctx)
        assert "0.87" in text and len(table) == 6 and table["auroc_ci"].tolist()[0] == "0.90–0.98"


def test_missing_results_name_the_command(bare_ctx) -> None:
    assert "refusal-explorer analyze graph" in graph_view(bare_ctx)[0]
    assert "refusal-explorer analyze probe" in probe_view(bare_ctx)[0]


def test_tabs_are_built_into_the_app(paper2_path: Path) -> None:
    with Study(paper2_path) as study:
        app = build_app(study)
        labels = [block.label for block in app.blocks.values() if type(block).__name__ == "Tab"]
    assert {"Graph", "Categories", "Jailbreak", "Probe"} <= set(labels)

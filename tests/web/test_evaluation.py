"""The Evaluation tab: its callbacks on a hand-made evaluation, and the tab built into the app."""

from __future__ import annotations

import shutil
from pathlib import Path

from app_web import build_app
from refusal_web.context import make_context
from refusal_web.evaluation import evaluation_view, generation_card
from store import Study
from tests.evaluation_synthetic import write_evaluation


def test_evaluation_tab_table_heatmap_and_generation_card(study_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "study.h5"
    shutil.copy(study_path, path)
    with Study(path) as study:
        text, figure, frame = evaluation_view(make_context(study, "default", export_dir=tmp_path))
    assert "refusal-explorer evaluate" in text and figure is None and frame is None
    write_evaluation(path)
    with Study(path) as study:
        ctx = make_context(study, "default", export_dir=tmp_path)
        text, figure, frame = evaluation_view(ctx)
        assert "== direction" in text and "phrase 25% [" in text and "weapons" in text
        assert len(frame) == 9 and frame["semantic"].tolist()[-1] == "refusal"
        heat = figure.data[0]
        assert list(heat.x) == ["1 (+42)", "2 (+17)"] and list(heat.y) == ["10", "20"] and heat.z[1][1] == 0.5
        assert heat.colorbar.title.text == "refusal rate" and "[42, 17]" in figure.layout.title.text
        card = generation_card(ctx, 0)
        assert "prompt 0" in card and "I'm sorry, I can't." in card and "substring: **refusal** (I'm sorry)" in card
        app = build_app(study)
    assert "Evaluation" in str(app.config)

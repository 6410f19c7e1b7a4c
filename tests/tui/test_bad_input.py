"""Bad input: one clear line and status 2, or a view that says which command produces it."""

from __future__ import annotations

from pathlib import Path

import pytest

import app_tui
from app_tui import build_app
from refusal_tui.screens.detail import FeatureDetailScreen
from refusal_tui.screens.features import FeaturesScreen
from refusal_tui.screens.prompt import PromptScreen
from refusal_tui.widgets import ExampleList
from tests.tui.helpers import SIZE, settle, shown


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = app_tui.main(argv)
    err = capsys.readouterr().err
    return status, err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_cli([str(tmp_path / "nope.h5")], capsys)
    assert status == 2 and err.count("\n") == 1 and "nope.h5: no such file" in err and "Traceback" not in err


def test_not_a_study_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all")
    status, err = run_cli([str(text)], capsys)
    assert status == 2 and err.count("\n") == 1 and "not a readable HDF5 file" in err
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as file:
        file["x"] = [1, 2, 3]
    status, err = run_cli([str(tmp_path / "other.h5")], capsys)
    assert status == 2 and "not a Refusal Explorer study file" in err


def test_bad_run_and_layer(study_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_cli([str(study_path), "--run", "nope"], capsys)
    assert status == 2 and "no analysis run 'nope' (runs: default)" in err
    status, err = run_cli([str(study_path), "--layer", "99"], capsys)
    assert status == 2 and "layer 99 is not in this study (layers: 6, 8)" in err


def test_no_file_without_demo_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    status, err = run_cli([], capsys)
    assert status == 2 and "refusal-explorer demo" in err and err.count("\n") == 1


def test_no_file_opens_the_demo_study(study_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "demo.h5").write_bytes(study_path.read_bytes())
    monkeypatch.chdir(tmp_path)
    opened: list[Path] = []
    from refusal_tui.app import RefusalApp

    monkeypatch.setattr(RefusalApp, "run", lambda self, *a, **k: opened.append(self.data.study.path))
    assert app_tui.run(None) == 0
    assert opened == [Path("studies") / "demo.h5"]


@pytest.mark.anyio
async def test_study_without_analyses_says_which_command_to_run(bare_path: Path) -> None:
    app = build_app(bare_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        analyses = shown(app, "#ov-analyses")
        assert "none yet" in analyses and "refusal-explorer analyze greedy" in analyses
        assert "no analyses in this run yet" in shown(app, "#ov-results")
        for key, stage in (("4", "greedy"), ("5", "fm"), ("6", "dormant")):
            await pilot.press(key)
            await settle(pilot, app)
            notice = app.screen.query_one("#notice")
            assert notice.display and not app.screen.query_one("#body").display
            assert f"refusal-explorer analyze {stage}" in shown(app, "#notice")
        await pilot.press("2")  # the table still works: statistics come from the cache
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, FeaturesScreen) and len(screen.grid.order) == 512
        assert screen.sort_column == "freq_diff"  # no cosine without the candidates stage
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen)
        assert "no FM on this layer yet (refusal-explorer analyze fm)" in shown(app, "#detail-links")
        assert len(app.screen.query_one("#detail-examples", ExampleList).examples) > 0
        app.open_prompt(0)
        await settle(pilot, app)
        await pilot.press("d")
        await settle(pilot, app)
        assert "refusal-explorer analyze direction" in shown(app, "#prompt-legend")


@pytest.mark.anyio
async def test_study_without_codes(no_codes_path: Path) -> None:
    app = build_app(no_codes_path)
    notes: list[str] = []
    app.notify = lambda message, **_: notes.append(message)  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert "none: cache SAE codes with `refusal-explorer cache --sae LAYER=…`" in shown(app, "#ov-study")
        analyses = shown(app, "#ov-analyses")  # SAE stages are not offered as commands that would fail
        assert "run: refusal-explorer analyze direction" in analyses and "run: refusal-explorer analyze candidates" not in analyses
        assert "needs SAE codes, which this study lacks" in analyses
        await pilot.press("2")
        await settle(pilot, app)
        assert "has no SAE codes" in shown(app, "#notice") and "refusal-explorer cache --sae" in shown(app, "#notice")
        app.open_latent(1)
        await settle(pilot, app)
        assert isinstance(app.screen, FeaturesScreen) and notes and "no SAE codes" in notes[0]
        await pilot.press("3")
        await settle(pilot, app)
        assert len(app.screen.grid.order) == 8  # prompts are browsable without codes
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, PromptScreen) and shown(app, "#prompt-head").startswith("Prompt #0")


@pytest.mark.anyio
async def test_study_without_the_latent_index(unindexed_path: Path) -> None:
    app = build_app(unindexed_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(pilot, app)
        assert "refusal-explorer cache --resume" in shown(app, "#notice")
        app.open_latent(3)
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen)
        assert "refusal-explorer cache --resume" in shown(app, "#notice")

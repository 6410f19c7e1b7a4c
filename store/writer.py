"""Crash-safe, resumable writing of a study file.

Why SWMR: in HDF5's single-writer/multiple-reader mode the library orders its metadata writes so
that the file on disk is always a valid HDF5 file, even after ``kill -9``. Each batch appends to
every dataset, flushes, and only then advances ``/committed``; rows past that counter are
invisible to readers and are cut off on resume. Writing the same prompts in the same order
therefore ends in the same file contents whether or not the run was interrupted.

A file left by a crash keeps HDF5's "open for writing" flag, so it cannot be reopened for
writing; resume copies it (read-only) into a fresh file, truncates, and renames it into place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from store.errors import StudyFileError
from store.finalize import build_latent_index
from store.schema import (
    FORMAT,
    PROMPT_STRING_FIELDS,
    RESID_ROWS_ALL,
    RESID_ROWS_POST_INSTRUCTION,
    SCHEMA_VERSION,
    STR,
    check_study,
    json_attr,
)

# Chunk sizes: a prompt-level chunk holds many prompts, a token-level one ~64k entries, so a
# batch append touches few chunks and a reader's slice of one prompt reads one or two.
_PROMPT_CHUNK = 1024
_TOKEN_CHUNK = 65536
_RESID_CHUNK_ROWS = 64
_COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """Everything fixed when a study file is created."""

    model_id: str
    """Model name as the user gave it or its upstream id (e.g. Qwen/Qwen2.5-Coder-0.5B-Instruct)."""
    model_revision: str = ""
    """Revision, commit or weights digest of the model, when known."""
    layers: tuple[int, ...]
    """Studied layers; layer L is the residual stream after decoder block L."""
    d_model: int
    """Width of the residual stream."""
    resid_rows: str = RESID_ROWS_POST_INSTRUCTION
    """Which residuals are stored: the last ``n_positions`` prompt tokens, or every token."""
    n_positions: int
    """Number of post-instruction positions (end-of-instruction template tokens) per prompt."""
    vocab: tuple[str, ...]
    """Display string of every token id, so readers never need the tokenizer."""
    sae_layers: dict[int, int] = field(default_factory=dict)
    """Layer → d_sae for the layers that get SAE codes."""
    sae_info: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Layer → JSON-able description of its SAE (release, id, architecture, hook)."""
    sae_arrays: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    """Layer → per-latent arrays known at creation (e.g. decoder_norm), stored under /sae."""
    identity: dict[str, Any]
    """The content-defining configuration; ``resume`` refuses a file whose identity differs."""
    config: dict[str, Any]
    """The full configuration of the run, recorded as JSON."""
    refusal_threshold: float
    """Fast-score threshold above which a prompt counts as refused."""
    versions: dict[str, str] = field(default_factory=dict)
    """Package versions that produced the file."""

    def __post_init__(self) -> None:
        if self.resid_rows not in (RESID_ROWS_POST_INSTRUCTION, RESID_ROWS_ALL):
            raise ValueError(f"resid_rows must be post-instruction or all, not {self.resid_rows!r}")
        if not self.layers:
            raise ValueError("a study needs at least one layer")
        unknown = set(self.sae_layers) - set(self.layers)
        if unknown:
            raise ValueError(f"SAE layers {sorted(unknown)} are not among the studied layers")


@dataclass(frozen=True, kw_only=True)
class PromptBatch:
    """Rows for a batch of prompts, in prompt order."""

    text: list[str]
    label: list[str]
    dataset: list[str]
    split: list[str]
    category: list[str]
    generation: list[str]
    token_ids: list[np.ndarray]
    refusal_score: np.ndarray  # float32 [b]
    refused: np.ndarray  # int8 [b]: 1 refused, 0 complied, -1 not generated
    resid: dict[int, np.ndarray]  # layer -> float16 [rows, d_model]
    codes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    """layer -> CSR (indptr from 0, indices, values) over this batch's token rows."""

    def __len__(self) -> int:
        return len(self.text)


def _strings(values: Sequence[str]) -> np.ndarray:
    # HDF5 variable-length strings end at NUL; show one as the visible symbol for NUL instead.
    return np.array([value.replace("\x00", "\u2400") for value in values], dtype=object)


def _extend(dataset: h5py.Dataset, rows: np.ndarray) -> None:
    start = dataset.shape[0]
    dataset.resize((start + len(rows),) + dataset.shape[1:])
    if len(rows):
        dataset[start:] = rows


def _create_layout(file: h5py.File, spec: StudySpec) -> None:
    attrs = file.attrs
    attrs["format"] = FORMAT
    attrs["schema_version"] = SCHEMA_VERSION
    attrs["identity"] = json.dumps(spec.identity, sort_keys=True)
    attrs["config"] = json.dumps(spec.config, sort_keys=True)
    attrs["model_id"] = spec.model_id
    attrs["model_revision"] = spec.model_revision
    attrs["layers"] = json.dumps(list(spec.layers))
    attrs["d_model"] = spec.d_model
    attrs["saes"] = json.dumps({str(k): v for k, v in spec.sae_info.items()}, sort_keys=True)
    attrs["versions"] = json.dumps(spec.versions, sort_keys=True)
    attrs["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    attrs["complete"] = False
    attrs["refusal_threshold"] = spec.refusal_threshold
    attrs["n_positions"] = spec.n_positions

    file.create_dataset("committed", data=np.zeros(1, dtype=np.int64))
    file.create_dataset("vocab", data=_strings(spec.vocab), dtype=STR, **_COMPRESSION)
    prompts = file.create_group("prompts")
    for name in PROMPT_STRING_FIELDS:
        prompts.create_dataset(name, (0,), maxshape=(None,), dtype=STR, chunks=(_PROMPT_CHUNK,))
    prompts.create_dataset("refusal_score", (0,), maxshape=(None,), dtype=np.float32, chunks=(_PROMPT_CHUNK,))
    prompts.create_dataset("refused", (0,), maxshape=(None,), dtype=np.int8, chunks=(_PROMPT_CHUNK,))
    prompts.create_dataset("token_offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(_PROMPT_CHUNK,))
    file.create_group("tokens").create_dataset(
        "ids", (0,), maxshape=(None,), dtype=np.int32, chunks=(_TOKEN_CHUNK,), **_COMPRESSION
    )
    for layer in spec.layers:
        group = file.create_group(f"layers/{layer}")
        resid = group.create_dataset(
            "resid", (0, spec.d_model), maxshape=(None, spec.d_model), dtype=np.float16,
            chunks=(_RESID_CHUNK_ROWS, spec.d_model), **_COMPRESSION,
        )
        resid.attrs["rows"] = spec.resid_rows
        if layer in spec.sae_layers:
            codes = group.create_group("codes")
            codes.attrs["d_sae"] = spec.sae_layers[layer]
            codes.create_dataset("indptr", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(_TOKEN_CHUNK,))
            codes.create_dataset("indices", (0,), maxshape=(None,), dtype=np.int32, chunks=(_TOKEN_CHUNK,), **_COMPRESSION)
            codes.create_dataset("values", (0,), maxshape=(None,), dtype=np.float16, chunks=(_TOKEN_CHUNK,), **_COMPRESSION)
            sae_group = group.create_group("sae")
            for name, values in spec.sae_arrays.get(layer, {}).items():
                sae_group.create_dataset(name, data=values)


def committed_lengths(file: h5py.File, n_prompts: int) -> dict[str, int]:
    """Length of every appendable dataset once exactly ``n_prompts`` prompts are written."""
    n_tokens = int(file["prompts/token_offsets"][n_prompts])
    n_positions = int(file.attrs["n_positions"])
    lengths = {f"prompts/{name}": n_prompts for name in PROMPT_STRING_FIELDS}
    lengths |= {"prompts/refusal_score": n_prompts, "prompts/refused": n_prompts}
    lengths |= {"prompts/token_offsets": n_prompts + 1, "tokens/ids": n_tokens}
    for layer in json.loads(file.attrs["layers"]):
        group = file[f"layers/{layer}"]
        per_prompt = group["resid"].attrs["rows"] == RESID_ROWS_POST_INSTRUCTION
        lengths[f"layers/{layer}/resid"] = n_prompts * n_positions if per_prompt else n_tokens
        if "codes" in group:
            nnz = int(group["codes/indptr"][n_tokens])
            lengths |= {
                f"layers/{layer}/codes/indptr": n_tokens + 1,
                f"layers/{layer}/codes/indices": nnz,
                f"layers/{layer}/codes/values": nnz,
            }
    return lengths


def _truncate_to_committed(file: h5py.File) -> int:
    n_prompts = int(file["committed"][0])
    for name, length in committed_lengths(file, n_prompts).items():
        dataset = file[name]
        if dataset.shape[0] != length:
            dataset.resize((length,) + dataset.shape[1:])
    return n_prompts


def _identity_mismatch(file: h5py.File, identity: dict[str, Any]) -> str | None:
    stored = json_attr(file, "identity", {})
    expected = json.loads(json.dumps(identity, sort_keys=True))  # same JSON normalisation
    for key in sorted(set(stored) | set(expected)):
        if stored.get(key) != expected.get(key):
            return f"{key}: the file has {stored.get(key)!r}, this run has {expected.get(key)!r}"
    return None


def _open_for_append(path: Path) -> h5py.File:
    """Open an existing study for writing; a crashed SWMR file is first copied and renamed."""
    try:
        return h5py.File(path, "r+", libver="latest")
    except OSError as error:
        if "already open for write" not in str(error):
            raise StudyFileError(f"{path}: cannot open for resuming ({error})") from error
    partial = path.with_name(path.name + ".tmp")
    with h5py.File(path, "r", libver="latest", swmr=True) as source, h5py.File(partial, "w", libver="latest") as copy:
        for key, value in source.attrs.items():
            copy.attrs[key] = value
        for key in source:
            source.copy(source[key], copy, name=key)
    os.replace(partial, path)
    return h5py.File(path, "r+", libver="latest")


class StudyWriter:
    """Appends prompt batches to a study file; see the module docstring for the guarantees."""

    def __init__(self, path: Path, file: h5py.File) -> None:
        self.path = path
        self._file = file
        self._layers = [int(layer) for layer in json.loads(file.attrs["layers"])]
        self._n_committed = _truncate_to_committed(file)
        file.flush()
        file.swmr_mode = True  # from here on, the file on disk stays valid at every instant

    @classmethod
    def create(cls, path: Path, spec: StudySpec, *, overwrite: bool = False) -> StudyWriter:
        path = Path(path)
        if path.exists() and not overwrite:
            raise StudyFileError(f"{path} already exists; pass --resume to continue it or --overwrite to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Build the empty layout beside the target, then rename: an old file given with
        # --overwrite survives any failure before this point.
        partial = path.with_name(path.name + ".tmp")
        with h5py.File(partial, "w", libver="latest") as file:
            _create_layout(file, spec)
        os.replace(partial, path)
        return cls(path, h5py.File(path, "r+", libver="latest"))

    @classmethod
    def resume(cls, path: Path, spec: StudySpec) -> StudyWriter:
        path = Path(path)
        if not path.exists():
            raise StudyFileError(f"{path} does not exist; nothing to resume (drop --resume to start it)")
        file = _open_for_append(path)
        try:
            check_study(file, str(path))
            mismatch = _identity_mismatch(file, spec.identity)
            if mismatch:
                raise StudyFileError(f"{path} was made with a different model or config ({mismatch}); use --overwrite or another --out")
        except BaseException:
            file.close()
            raise
        return cls(path, file)

    @property
    def n_committed(self) -> int:
        """Prompts fully written; a resumed run continues from this index."""
        return self._n_committed

    @property
    def complete(self) -> bool:
        return bool(self._file.attrs["complete"])

    def append(self, batch: PromptBatch) -> None:
        file = self._file
        prompts = file["prompts"]
        for name in PROMPT_STRING_FIELDS:
            _extend(prompts[name], _strings(getattr(batch, name)))
        _extend(prompts["refusal_score"], np.asarray(batch.refusal_score, np.float32))
        _extend(prompts["refused"], np.asarray(batch.refused, np.int8))
        lengths = np.array([len(ids) for ids in batch.token_ids], np.int64)
        token_start = int(prompts["token_offsets"][-1])
        _extend(prompts["token_offsets"], token_start + np.cumsum(lengths))
        _extend(file["tokens/ids"], np.concatenate(batch.token_ids).astype(np.int32) if len(batch) else np.zeros(0, np.int32))
        for layer in self._layers:
            _extend(file[f"layers/{layer}/resid"], np.asarray(batch.resid[layer], np.float16))
            if f"layers/{layer}/codes" in file:
                indptr, indices, values = batch.codes[layer]
                codes = file[f"layers/{layer}/codes"]
                nnz_start = int(codes["indptr"][-1])
                _extend(codes["indptr"], nnz_start + np.asarray(indptr[1:], np.int64))
                _extend(codes["indices"], np.asarray(indices, np.int32))
                _extend(codes["values"], np.asarray(values, np.float16))
        file.flush()  # the rows reach the disk before the counter that makes them visible
        self._n_committed += len(batch)
        file["committed"][0] = self._n_committed
        file.flush()

    def finalize(self, *, memory_budget_bytes: int = 1 << 30) -> None:
        """Leave SWMR mode, build the per-latent index and statistics, mark the study complete.

        Idempotent: an interrupted finalize is simply run again.
        """
        self._file.close()
        with h5py.File(self.path, "r+", libver="latest") as file:
            build_latent_index(file, memory_budget_bytes=memory_budget_bytes)
            file.attrs["complete"] = True
        self._file = h5py.File(self.path, "r", libver="latest")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StudyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

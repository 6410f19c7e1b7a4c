"""Crash-safe, resumable writing of a study file (guarantees per operation: docs/DURABILITY.md).

Appending (the cache stage) uses HDF5's single-writer/multiple-reader (SWMR) mode: the library
orders its metadata writes so that the file on disk is a valid HDF5 file at every instant, even
after ``kill -9``, and readers may open it meanwhile. Each batch appends to every dataset,
flushes and fsyncs, and only then advances ``/committed``; rows past that counter are invisible
to readers and are cut off on resume. Writing the same prompts in the same order therefore ends
in the same file contents whether or not the run was interrupted.

Everything else (finalize, analysis saves, recovery) cannot be done in SWMR mode, so it is done
on a shadow copy renamed over the study (store.durable). A study is only ever opened for
writing straight into SWMR mode, never in HDF5's plain read-write mode, whose crash leaves a
file nothing can open.

A file left by a killed writer keeps HDF5's "open for writing" flag, so it cannot be reopened
for writing; resume copies it (read-only) into a fresh file, truncates, and renames it into place.
Every writer holds the study's lock (store.lock) while it writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from store.errors import StudyFileError
from store.durable import remove_stale_shadow, replace_durably, shadow_copy, shadow_path
from store.finalize import build_latent_index
from store.lock import study_lock
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
from store.study import open_h5_readonly

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


def _identity_mismatch(file: h5py.File, identity: dict[str, Any], *, skip: tuple[str, ...] = ()) -> str | None:
    stored = json_attr(file, "identity", {})
    if not isinstance(stored, dict):
        raise StudyFileError("the study's identity attribute is damaged")
    expected = json.loads(json.dumps(identity, sort_keys=True))  # same JSON normalisation
    for key in sorted((set(stored) | set(expected)) - set(skip)):
        if stored.get(key) != expected.get(key):
            return f"{key}: the file has {stored.get(key)!r}, this run has {expected.get(key)!r}"
    return None


def _file_access() -> h5py.h5p.PropFAID:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    # One writer per study is store.lock's job; HDF5's own lock would let a reader block us.
    fapl.set_file_locking(False, True)
    return fapl


def _open_swmr_writer(path: Path) -> h5py.File:
    """Open for appending straight into SWMR mode: the very first write (the superblock's
    "open for SWMR writing" flag) already leaves a file that readers and recovery can open."""
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE, fapl=_file_access()))


def _fd(file: h5py.File) -> int:
    return int(file.id.get_vfd_handle())


def _recover_killed_writer(path: Path) -> None:
    """A study whose writer was killed keeps HDF5's "open for SWMR writing" flag and can only be
    read. Rewrite its committed rows (read in SWMR mode) into a fresh shadow file and rename that
    over it; killed at any instant of this, the study is as before. (HDF5's object copy is no
    use here: it copies the uncommitted rows too, whose string heap a kill may have left broken.)
    """
    from store.rows import ROWS_PER_COPY, read_rows, spec_of

    shadow = shadow_path(path)
    try:
        with open_h5_readonly(path) as source, h5py.File(shadow, "w", libver="latest", locking=False) as copy:
            spec = spec_of(source)
            _create_layout(copy, spec)
            for key, value in source.attrs.items():
                copy.attrs[key] = value  # created_at, versions, …: exactly as the study had them
            n_committed = int(source["committed"][0])
            for start in range(0, n_committed, ROWS_PER_COPY):
                _append_rows(copy, spec.layers, read_rows(source, spec.layers, start, min(n_committed, start + ROWS_PER_COPY)))
            copy["committed"][0] = n_committed
            if "analysis" in source:  # saved on the unfinished study before this cache run resumed it
                source.copy(source["analysis"], copy, name="analysis")
    except BaseException:
        shadow.unlink(missing_ok=True)
        raise
    replace_durably(shadow, path)


def check_resumable(path: Path, identity: dict[str, Any], *, skip: tuple[str, ...] = ()) -> bool:
    """Refuse, in one line and without writing anything, a study that this run cannot continue;
    True when it is already complete. ``skip``: identity keys not known yet (the model's, before
    it loads)."""
    path = Path(path)
    if not path.exists():
        raise StudyFileError(f"{path} does not exist; nothing to resume (drop --resume to start it)")
    with open_h5_readonly(path) as file:
        check_study(file, str(path))
        mismatch = _identity_mismatch(file, identity, skip=skip)
        if mismatch:
            raise StudyFileError(f"{path} was made with a different model or config ({mismatch}); use --overwrite or another --out")
        try:
            return bool(file.attrs["complete"])
        except KeyError:
            raise StudyFileError(f"{path}: study file is missing its 'complete' attribute; it is corrupted") from None


def require_study_file(path: Path, action: str) -> None:
    """``--overwrite`` replaces studies only: refuse, in one line, any other file."""
    path = Path(path)
    if path.is_dir():
        raise StudyFileError(f"{path} is a directory; give a study file path such as study.h5")
    try:
        with open_h5_readonly(path) as file:
            check_study(file, str(path))
    except StudyFileError:
        raise StudyFileError(f"refusing to {action} {path}: it is not a Refusal Explorer study file "
                             "(only studies are replaced); delete it yourself or choose another path") from None


class StudyWriter:
    """Appends prompt batches to a study file; see the module docstring for the guarantees.

    Holds the study's writer lock (store.lock) from ``create``/``resume`` until ``close``."""

    def __init__(self, path: Path, file: h5py.File, locks: ExitStack, *, private: bool = False) -> None:
        self.path = path
        self._file = file
        self._locks = locks
        self._private = private
        self._layers = [int(layer) for layer in json.loads(file.attrs["layers"])]
        self._n_committed = _truncate_to_committed(file)
        file.flush()
        os.fsync(_fd(file))

    @staticmethod
    def _lock(path: Path) -> ExitStack:
        locks = ExitStack()
        locks.enter_context(study_lock(path))
        return locks

    @classmethod
    def create(cls, path: Path, spec: StudySpec, *, overwrite: bool = False, private: bool = False) -> StudyWriter:
        """A new, empty study at ``path``. ``private``: a file nobody else reads yet (a merge
        being assembled), finalized in place instead of on a shadow copy."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise StudyFileError(f"{path} already exists; pass --resume to continue it or --overwrite to replace it")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StudyFileError(f"cannot create the directory {path.parent} ({error.strerror})") from error
        locks = cls._lock(path)
        try:
            if path.exists() and not private:
                require_study_file(path, "overwrite")
            # Build the empty layout beside the target, then rename: an old file given with
            # --overwrite survives any failure before this point.
            shadow = shadow_path(path)
            with h5py.File(shadow, "w", libver="latest", locking=False) as file:
                _create_layout(file, spec)
            replace_durably(shadow, path)
            return cls(path, _open_swmr_writer(path), locks, private=private)
        except BaseException:
            locks.close()
            raise

    @classmethod
    def resume(cls, path: Path, spec: StudySpec) -> StudyWriter:
        path = Path(path)
        locks = cls._lock(path)
        try:
            check_resumable(path, spec.identity)
            remove_stale_shadow(path)
            try:
                file = _open_swmr_writer(path)
            except OSError as error:
                if "already open for" not in str(error):
                    raise StudyFileError(f"{path}: cannot open for resuming ({error})") from error
                _recover_killed_writer(path)  # its writer was killed; the lock says it is gone
                file = _open_swmr_writer(path)
            return cls(path, file, locks)
        except BaseException:
            locks.close()
            raise

    @property
    def n_committed(self) -> int:
        """Prompts fully written; a resumed run continues from this index."""
        return self._n_committed

    @property
    def complete(self) -> bool:
        return bool(self._file.attrs["complete"])

    def append(self, batch: PromptBatch) -> None:
        file = self._file
        _append_rows(file, self._layers, batch)
        # the rows reach the disk before the counter that makes them visible (fsync: also
        # across a power cut), and the counter before the next batch is started
        file.flush()
        os.fsync(_fd(file))
        self._n_committed += len(batch)
        file["committed"][0] = self._n_committed
        file.flush()
        os.fsync(_fd(file))

    def finalize(self, *, memory_budget_bytes: int = 1 << 30) -> None:
        """Build the per-latent index and statistics and mark the study complete, on a shadow
        copy that replaces the study in one rename (store.durable): killed at any instant, the
        study is the committed, unfinalized one, and ``--resume`` finalizes it again."""
        self._file.close()
        if self._private:
            _finalize_file(self.path, memory_budget_bytes)
        else:
            with shadow_copy(self.path) as shadow:
                _finalize_file(shadow, memory_budget_bytes)
        self._file = open_h5_readonly(self.path)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._locks.close()

    def __enter__(self) -> StudyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _append_rows(file: h5py.File, layers: Sequence[int], batch: PromptBatch) -> None:
    """Extend every dataset by one batch (the counter ``/committed`` is the caller's)."""
    prompts = file["prompts"]
    for name in PROMPT_STRING_FIELDS:
        _extend(prompts[name], _strings(getattr(batch, name)))
    _extend(prompts["refusal_score"], np.asarray(batch.refusal_score, np.float32))
    _extend(prompts["refused"], np.asarray(batch.refused, np.int8))
    lengths = np.array([len(ids) for ids in batch.token_ids], np.int64)
    token_start = int(prompts["token_offsets"][-1])
    _extend(prompts["token_offsets"], token_start + np.cumsum(lengths))
    _extend(file["tokens/ids"], np.concatenate(batch.token_ids).astype(np.int32) if len(batch) else np.zeros(0, np.int32))
    for layer in layers:
        _extend(file[f"layers/{layer}/resid"], np.asarray(batch.resid[layer], np.float16))
        if f"layers/{layer}/codes" in file:
            indptr, indices, values = batch.codes[layer]
            codes = file[f"layers/{layer}/codes"]
            nnz_start = int(codes["indptr"][-1])
            _extend(codes["indptr"], nnz_start + np.asarray(indptr[1:], np.int64))
            _extend(codes["indices"], np.asarray(indices, np.int32))
            _extend(codes["values"], np.asarray(values, np.float16))


def _finalize_file(path: Path, memory_budget_bytes: int) -> None:
    with h5py.File(path, "r+", libver="latest", locking=False) as file:
        _truncate_to_committed(file)
        build_latent_index(file, memory_budget_bytes=memory_budget_bytes)
        file.attrs["complete"] = True

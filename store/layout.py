"""The study file's datasets as written: the spec fixed at creation, the batches appended, and
reading them back (``spec_of``, ``read_rows``: writing the batches read from a study into a study
made from its spec gives the same datasets; merge and recovery rely on it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from store.schema import (
    FORMAT,
    PROMPT_STRING_FIELDS,
    RESID_ROWS_ALL,
    RESID_ROWS_POST_INSTRUCTION,
    SCHEMA_VERSION,
    STR,
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


def create_layout(file: h5py.File, spec: StudySpec) -> None:
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


def truncate_to_committed(file: h5py.File) -> int:
    n_prompts = int(file["committed"][0])
    for name, length in committed_lengths(file, n_prompts).items():
        dataset = file[name]
        if dataset.shape[0] != length:
            dataset.resize((length,) + dataset.shape[1:])
    return n_prompts


def append_rows(file: h5py.File, layers: Sequence[int], batch: PromptBatch) -> None:
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


ROWS_PER_COPY = 256  # prompts copied per append: bounds memory, whatever the study's size


def spec_of(file: h5py.File) -> StudySpec:
    """The spec a study file was created with."""
    layers = tuple(int(layer) for layer in json.loads(file.attrs["layers"]))
    first = file[f"layers/{layers[0]}/resid"]
    sae_layers, sae_arrays = {}, {}
    for layer in layers:
        group = file[f"layers/{layer}"]
        if "codes" in group:
            sae_layers[layer] = int(group["codes"].attrs["d_sae"])
            sae_arrays[layer] = {name: dataset[...] for name, dataset in group["sae"].items()}
    return StudySpec(
        model_id=str(file.attrs["model_id"]), model_revision=str(file.attrs["model_revision"]), layers=layers,
        d_model=int(file.attrs["d_model"]), resid_rows=str(first.attrs["rows"]), n_positions=int(file.attrs["n_positions"]),
        vocab=tuple(file["vocab"].asstr()[...].tolist()),
        sae_layers=sae_layers,
        sae_info={int(layer): info for layer, info in json_attr(file, "saes", {}).items()},
        sae_arrays=sae_arrays, identity=json_attr(file, "identity", {}), config=json_attr(file, "config", {}),
        refusal_threshold=float(file.attrs["refusal_threshold"]), versions=json_attr(file, "versions", {}),
    )


def read_rows(file: h5py.File, layers: Sequence[int], start: int, stop: int) -> PromptBatch:
    """Prompts ``[start, stop)`` of a study file as one batch, exactly as they were appended."""
    prompts = file["prompts"]
    offsets = prompts["token_offsets"][start : stop + 1]
    tok_start, tok_stop = int(offsets[0]), int(offsets[-1])
    ids = file["tokens/ids"][tok_start:tok_stop]
    token_ids = np.split(ids, offsets[1:-1] - tok_start)
    n_positions = int(file.attrs["n_positions"])
    resid, codes = {}, {}
    for layer in layers:
        group = file[f"layers/{layer}"]
        if group["resid"].attrs["rows"] == RESID_ROWS_POST_INSTRUCTION:
            resid[layer] = group["resid"][start * n_positions : stop * n_positions]
        else:
            resid[layer] = group["resid"][tok_start:tok_stop]
        if "codes" in group:
            indptr = group["codes/indptr"][tok_start : tok_stop + 1]
            low, high = int(indptr[0]), int(indptr[-1])
            codes[layer] = (indptr - low, group["codes/indices"][low:high], group["codes/values"][low:high])
    strings = {name: prompts[name].asstr()[start:stop].tolist() for name in PROMPT_STRING_FIELDS}
    return PromptBatch(
        **strings, token_ids=token_ids, refusal_score=prompts["refusal_score"][start:stop],
        refused=prompts["refused"][start:stop], resid=resid, codes=codes,
    )

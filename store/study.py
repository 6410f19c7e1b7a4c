"""Read-only access to a study file.

Readers see only committed prompts (rows past ``/committed`` belong to a batch that was being
written), so a study that is still being cached, or was interrupted, can be browsed safely.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from store.errors import StudyFileError
from store.schema import PROMPT_STRING_FIELDS, RESID_ROWS_POST_INSTRUCTION, check_study, json_attr


@dataclass(frozen=True, kw_only=True)
class StudyMeta:
    path: Path
    schema_version: int
    model_id: str
    model_revision: str
    layers: tuple[int, ...]
    d_model: int
    n_positions: int
    saes: dict[int, dict[str, Any]]
    config: dict[str, Any]
    identity: dict[str, Any]
    versions: dict[str, str]
    created_at: str
    complete: bool
    refusal_threshold: float


@dataclass(frozen=True, kw_only=True)
class PromptRecord:
    index: int
    text: str
    label: str
    dataset: str
    split: str
    category: str
    generation: str
    refusal_score: float
    refused: int  # 1 refused, 0 complied, -1 not generated
    token_ids: np.ndarray  # int32 [n_tokens]
    tokens: list[str]  # display string per token


def open_h5_readonly(path: Path) -> h5py.File:
    """Open read-only, also a file whose writer is running or was killed.

    Readers open without HDF5's file lock, so they never block a writer (one writer per study is
    store.lock's job). A study being cached, or whose writer was killed, is flagged "open for
    writing" and is read in SWMR mode, which shows its committed prompts. Finalize and analysis
    saves replace the file by rename, so a reader keeps reading the version it opened.
    (A file that is not flagged is opened in plain read mode: SWMR readers retry every damaged
    metadata block a hundred times, which would make a truncated file take minutes to refuse.)
    """
    path = Path(path)
    if not path.exists():
        raise StudyFileError(f"{path}: no such file")
    if path.is_dir():
        raise StudyFileError(f"{path} is a directory, not a study file")
    try:
        return h5py.File(path, "r", libver="latest", locking=False)
    except OSError as error:
        if "already open for write" in str(error) or "already open for SWMR" in str(error):
            try:
                return h5py.File(path, "r", libver="latest", swmr=True, locking=False)
            except OSError:
                pass
        if isinstance(error, PermissionError):
            raise StudyFileError(f"{path}: permission denied") from error
        raise StudyFileError(f"{path}: not a readable HDF5 file (corrupted or truncated?)") from error


class LayerCodes:
    """SAE codes of one layer: per token (CSR) and per latent (CSC)."""

    def __init__(self, group: h5py.Group, token_offsets: np.ndarray) -> None:
        self._group = group
        self._offsets = token_offsets
        self.d_sae = int(group["codes"].attrs["d_sae"])

    @cached_property
    def _indptr(self) -> np.ndarray:
        return self._group["codes/indptr"][: int(self._offsets[-1]) + 1]

    @property
    def has_latent_index(self) -> bool:
        return "by_feature" in self._group

    def prompt_codes(self, prompt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR (indptr from 0, indices, values) over the tokens of one prompt."""
        start, stop = int(self._offsets[prompt]), int(self._offsets[prompt + 1])
        indptr = self._indptr[start : stop + 1]
        low, high = int(indptr[0]), int(indptr[-1])
        indices = self._group["codes/indices"][low:high]
        values = self._group["codes/values"][low:high].astype(np.float32)
        return indptr - low, indices, values

    def prompt_dense(self, prompt: int, latents: np.ndarray) -> np.ndarray:
        """Activations [n_tokens, len(latents)] of the chosen latents on one prompt."""
        indptr, indices, values = self.prompt_codes(prompt)
        latents = np.asarray(latents)
        out = np.zeros((len(indptr) - 1, len(latents)), np.float32)
        column = {int(latent): j for j, latent in enumerate(latents)}
        rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        for row, latent, value in zip(rows, indices, values):
            j = column.get(int(latent))
            if j is not None:
                out[row, j] = value
        return out

    def latent_entries(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """Every (token row, activation) of one latent: one contiguous read of the CSC index."""
        if not self.has_latent_index:
            raise StudyFileError("this study has no per-latent index yet; finish it with `refusal-explorer cache --resume`")
        if not 0 <= latent < self.d_sae:
            raise StudyFileError(f"latent {latent} is out of range (this SAE has {self.d_sae} latents)")
        indptr = self._group["by_feature/indptr"]
        low, high = int(indptr[latent]), int(indptr[latent + 1])
        return self._group["by_feature/rows"][low:high], self._group["by_feature/values"][low:high].astype(np.float32)

    def top_activations(self, latent: int, k: int = 20) -> list[tuple[int, int, float]]:
        """The k prompts where the latent peaks: (prompt, token position, activation), best first."""
        rows, values = self.latent_entries(latent)
        if not len(rows):
            return []
        prompts = np.searchsorted(self._offsets, rows, side="right") - 1
        order = np.lexsort((-values, prompts))  # per prompt, the strongest token first
        first = np.ones(len(order), bool)
        first[1:] = prompts[order][1:] != prompts[order][:-1]
        best = order[first]
        best = best[np.argsort(-values[best], kind="stable")][:k]
        return [(int(prompts[i]), int(rows[i] - self._offsets[prompts[i]]), float(values[i])) for i in best]

    def stats(self) -> dict[str, np.ndarray]:
        """Per-latent arrays under /sae (decoder_norm, token/prompt frequency per label, …)."""
        group = self._group.get("sae")
        if group is None:
            return {}
        return {name: (group[name].asstr()[...] if group[name].dtype.kind == "O" else group[name][...]) for name in group}


class Study:
    """A study file opened read-only. Use as a context manager or call ``close()``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._file = open_h5_readonly(self.path)
        try:
            check_study(self._file, str(self.path))
            self.n_prompts = int(self._file["committed"][0])
            self._offsets = self._file["prompts/token_offsets"][: self.n_prompts + 1]
            self.meta  # parse every root attribute now, so a damaged one is one line here
        except KeyError as error:
            self._file.close()
            raise StudyFileError(f"{self.path}: study file is missing {error}; it is corrupted") from error
        except (ValueError, TypeError, AttributeError) as error:
            self._file.close()
            raise StudyFileError(f"{self.path}: study file has a damaged attribute ({error}); it is corrupted") from error
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def meta(self) -> StudyMeta:
        attrs = self._file.attrs
        return StudyMeta(
            path=self.path,
            schema_version=int(attrs["schema_version"]),
            model_id=str(attrs["model_id"]),
            model_revision=str(attrs.get("model_revision", "")),
            layers=tuple(int(layer) for layer in json.loads(attrs["layers"])),
            d_model=int(attrs["d_model"]),
            n_positions=int(attrs["n_positions"]),
            saes={int(k): v for k, v in json_attr(self._file, "saes", {}).items()},
            config=json_attr(self._file, "config", {}),
            identity=json_attr(self._file, "identity", {}),
            versions=json_attr(self._file, "versions", {}),
            created_at=str(attrs.get("created_at", "")),
            complete=bool(attrs.get("complete", False)),
            refusal_threshold=float(attrs["refusal_threshold"]),
        )

    @property
    def file(self) -> h5py.File:
        """The open HDF5 file, for the analysis readers in ``store.analysis``."""
        return self._file

    @property
    def token_offsets(self) -> np.ndarray:
        return self._offsets

    def column(self, name: str) -> np.ndarray:
        """One committed column of /prompts (strings decoded)."""
        dataset = self._file[f"prompts/{name}"]
        if name in PROMPT_STRING_FIELDS:
            return dataset.asstr()[: self.n_prompts]
        return dataset[: self.n_prompts]

    @cached_property
    def labels(self) -> np.ndarray:
        return self.column("label")

    @cached_property
    def vocab(self) -> np.ndarray:
        return self._file["vocab"].asstr()[...]

    def token_ids(self, prompt: int) -> np.ndarray:
        return self._file["tokens/ids"][int(self._offsets[prompt]) : int(self._offsets[prompt + 1])]

    def token_strings(self, ids: np.ndarray) -> list[str]:
        vocab = self.vocab
        return [vocab[i] if 0 <= i < len(vocab) else f"<{i}>" for i in ids.tolist()]

    def prompt(self, index: int) -> PromptRecord:
        if not 0 <= index < self.n_prompts:
            raise StudyFileError(f"prompt {index} is out of range (the study has {self.n_prompts})")
        prompts = self._file["prompts"]
        text = {name: prompts[name].asstr()[index] for name in PROMPT_STRING_FIELDS}
        ids = self.token_ids(index)
        return PromptRecord(
            index=index, **text, refusal_score=float(prompts["refusal_score"][index]),
            refused=int(prompts["refused"][index]), token_ids=ids, tokens=self.token_strings(ids),
        )

    def resid(self, layer: int, prompts: np.ndarray | None = None) -> np.ndarray:
        """Residuals [n, n_positions, d_model] (float32) at the post-instruction positions."""
        group = self._layer(layer)
        n_positions = self.meta.n_positions
        chosen = np.arange(self.n_prompts) if prompts is None else np.asarray(prompts)
        dataset = group["resid"]
        if dataset.attrs["rows"] == RESID_ROWS_POST_INSTRUCTION:
            block = dataset[: self.n_prompts * n_positions].reshape(self.n_prompts, n_positions, -1)
            return block[chosen].astype(np.float32)
        rows = (self._offsets[chosen + 1][:, None] - n_positions + np.arange(n_positions)).reshape(-1)
        order = np.argsort(rows)
        gathered = np.empty((len(rows), dataset.shape[1]), np.float16)
        gathered[order] = dataset[rows[order]]  # h5py fancy indexing wants ascending rows
        return gathered.reshape(len(chosen), n_positions, -1).astype(np.float32)

    def has_codes(self, layer: int) -> bool:
        return "codes" in self._layer(layer)

    def codes(self, layer: int) -> LayerCodes:
        group = self._layer(layer)
        if "codes" not in group:
            raise StudyFileError(f"layer {layer} has no SAE codes; cache it with `refusal-explorer cache --sae {layer}=…`")
        return LayerCodes(group, self._offsets)

    def _layer(self, layer: int) -> h5py.Group:
        if layer not in self.meta.layers:
            raise StudyFileError(f"layer {layer} is not in this study (layers: {', '.join(map(str, self.meta.layers))})")
        return self._file[f"layers/{layer}"]

    def refusal_rate(self) -> dict[str, float]:
        """Fraction of prompts per label whose fast score is above the study's threshold."""
        refused = self.column("refusal_score") > self.meta.refusal_threshold
        return {label: float(refused[self.labels == label].mean()) for label in sorted(set(self.labels.tolist()))}

    def analysis_runs(self) -> list[str]:
        return sorted(self._file["analysis"]) if "analysis" in self._file else []

    def summary(self) -> dict[str, Any]:
        """What `refusal-explorer info` prints."""
        meta = self.meta
        counts = {label: int((self.labels == label).sum()) for label in sorted(set(self.labels.tolist()))}
        generated = self.column("refused")
        return {
            "path": str(self.path),
            "schema_version": meta.schema_version,
            "model": meta.model_id,
            "model_revision": meta.model_revision,
            "layers": list(meta.layers),
            "positions": self._file[f"layers/{meta.layers[0]}/resid"].attrs["rows"],
            "n_positions": meta.n_positions,
            "prompts": counts,
            "tokens": int(self._offsets[-1]),
            "refusal_rate": self.refusal_rate(),
            "refusal_threshold": meta.refusal_threshold,
            "refused_by_generation": {
                label: float((generated[(self.labels == label) & (generated >= 0)] == 1).mean())
                for label in counts if ((self.labels == label) & (generated >= 0)).any()
            },
            "saes": {str(k): v for k, v in meta.saes.items()},
            "complete": meta.complete,
            "created_at": meta.created_at,
            "analysis_runs": self.analysis_runs(),
        }

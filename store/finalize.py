"""Per-latent index (CSC) and statistics, built once after all prompts are written.

The CSR codes answer "which latents fire on this token"; the feature views ask the transpose,
"where does latent f fire". Storing the codes a second time sorted by latent makes that one
contiguous read instead of a scan over every token.
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from store.schema import STR

_SCAN_ENTRIES = 1 << 22  # entries read per pass over the CSR; bounds memory of one scan step
_BYTES_PER_ENTRY = 8 + 4 + 2 + 8  # row, feature, value, and the sort permutation


def _label_codes(file: h5py.File) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct labels, the label index of each prompt, and prompt counts per label."""
    labels = file["prompts/label"].asstr()[...]
    names = sorted(set(labels.tolist()))
    index = np.array([names.index(label) for label in labels], dtype=np.int64) if len(labels) else np.zeros(0, np.int64)
    return names, index, np.bincount(index, minlength=len(names))


def _scan_block(codes: h5py.Group, offsets: np.ndarray, low: int, high: int) -> tuple[np.ndarray, ...]:
    """All entries with latent in [low, high): (token row, latent, value), in token-row order."""
    indptr = codes["indptr"][...]
    nnz = int(indptr[-1])
    rows, latents, values = [], [], []
    for start in range(0, nnz, _SCAN_ENTRIES):
        stop = min(nnz, start + _SCAN_ENTRIES)
        chunk_latents = codes["indices"][start:stop]
        keep = (chunk_latents >= low) & (chunk_latents < high)
        if not keep.any():
            continue
        positions = np.arange(start, stop, dtype=np.int64)[keep]
        rows.append(np.searchsorted(indptr, positions, side="right") - 1)
        latents.append(chunk_latents[keep])
        values.append(codes["values"][start:stop][keep])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float16)
    return np.concatenate(rows), np.concatenate(latents), np.concatenate(values)


def build_latent_index(file: h5py.File, *, memory_budget_bytes: int = 1 << 30) -> None:
    """Write /layers/<L>/by_feature and /layers/<L>/sae statistics for every layer with codes."""
    offsets = file["prompts/token_offsets"][...]
    label_names, prompt_label, prompts_per_label = _label_codes(file)
    tokens_per_prompt = np.diff(offsets)
    tokens_per_label = np.bincount(prompt_label, weights=tokens_per_prompt, minlength=len(label_names))
    for layer in json.loads(file.attrs["layers"]):
        group = file[f"layers/{layer}"]
        if "codes" not in group:
            continue
        codes = group["codes"]
        d_sae = int(codes.attrs["d_sae"])
        nnz = int(codes["indptr"][-1])
        if "by_feature" in group:
            del group["by_feature"]  # left by an interrupted finalize
        index = group.create_group("by_feature")
        # Rows ascend within each latent, so shuffle + gzip shrinks them several-fold at ~1 ms
        # per query; int32 holds any study under 2^31 tokens.
        row_type = np.int32 if len(offsets) and offsets[-1] < 2**31 else np.int64
        layout = {"chunks": (min(nnz, 1 << 16),), "compression": "gzip", "compression_opts": 1, "shuffle": True} if nnz else {}
        out_rows = index.create_dataset("rows", (nnz,), dtype=row_type, **layout)
        out_values = index.create_dataset("values", (nnz,), dtype=np.float16, **layout)
        counts = np.zeros(d_sae, np.int64)
        token_hits = np.zeros((len(label_names), d_sae), np.float64)
        prompt_hits = np.zeros((len(label_names), d_sae), np.float64)
        value_sums = np.zeros((len(label_names), d_sae), np.float64)
        max_value = np.zeros(d_sae, np.float32)

        n_blocks = max(1, -(-nnz * _BYTES_PER_ENTRY // memory_budget_bytes))
        bounds = np.linspace(0, d_sae, n_blocks + 1).astype(np.int64)
        written = 0
        for low, high in zip(bounds[:-1], bounds[1:]):
            rows, latents, values = _scan_block(codes, offsets, int(low), int(high))
            order = np.argsort(latents, kind="stable")  # stable: rows stay ascending per latent
            rows, latents, values = rows[order], latents[order], values[order]
            out_rows[written : written + len(rows)] = rows
            out_values[written : written + len(rows)] = values
            written += len(rows)
            counts[low:high] = np.bincount(latents - low, minlength=high - low)
            prompt = np.searchsorted(offsets, rows, side="right") - 1
            label = prompt_label[prompt]
            np.add.at(token_hits, (label, latents), 1)
            np.add.at(value_sums, (label, latents), values.astype(np.float64))
            if len(latents):
                np.maximum.at(max_value, latents, values.astype(np.float32))
                # a prompt counts once per latent, however many of its tokens fire
                pairs = np.unique(prompt * d_sae + latents)
                pair_prompt, pair_latent = pairs // d_sae, pairs % d_sae
                np.add.at(prompt_hits, (prompt_label[pair_prompt], pair_latent), 1)
        index.create_dataset("indptr", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

        stats = group.require_group("sae")
        for name in ("labels", "token_freq", "prompt_freq", "mean_active", "max_active"):
            if name in stats:
                del stats[name]
        stats.create_dataset("labels", data=np.array(label_names, dtype=object), dtype=STR)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.create_dataset("token_freq", data=(token_hits / np.maximum(tokens_per_label, 1)[:, None]).astype(np.float32))
            stats.create_dataset("prompt_freq", data=(prompt_hits / np.maximum(prompts_per_label, 1)[:, None]).astype(np.float32))
            stats.create_dataset("mean_active", data=np.where(token_hits > 0, value_sums / np.maximum(token_hits, 1), 0).astype(np.float32))
        stats.create_dataset("max_active", data=max_value)

"""Reading a study back as the spec and the batches it was written from (merge and recovery).

``spec_of`` and ``read_rows`` invert ``StudyWriter.create`` and ``StudyWriter.append``: writing
``read_rows`` batches into a study made from ``spec_of`` gives the same datasets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import h5py
import numpy as np

from store.schema import PROMPT_STRING_FIELDS, RESID_ROWS_POST_INSTRUCTION, json_attr
from store.writer import PromptBatch, StudySpec

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

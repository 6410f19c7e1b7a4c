"""Names, versions and checks of the study file (ARCHITECTURE §2).

One HDF5 file per study. Everything the readers and writers agree on lives here, so the layout
is described in one place:

    /                      attrs: format, schema_version, identity (JSON), config (JSON),
                           model_id, model_revision, saes (JSON per layer), versions (JSON),
                           created_at, complete (bool), refusal_threshold, n_positions
    /committed             int64[1]: prompts whose rows are fully written (crash-safe counter)
    /vocab                 str[vocab]: display string of every token id
    /prompts/text|label|dataset|split|category|generation    str[n]
    /prompts/refusal_score float32[n]   fast score: log-odds of the refusal token(s)
    /prompts/refused       int8[n]      from the generation: 1, 0, or -1 when not generated
    /prompts/token_offsets int64[n+1]   CSR offsets of each prompt's tokens in /tokens/ids
    /tokens/ids            int32[n_tokens]
    /layers/<L>/resid      float16[rows, d_model]; attrs rows = "post-instruction" | "all"
    /layers/<L>/codes/indptr|indices|values    SAE codes, CSR over token rows
    /layers/<L>/by_feature/indptr|rows|values  the same codes, CSC (one slice per latent)
    /layers/<L>/sae/...    per-latent statistics
    /analysis/<run>/<stage>/...               results of explorer stages
"""

from __future__ import annotations

import json

import h5py

from store.errors import StudyFileError

FORMAT = "refusal-explorer-study"
SCHEMA_VERSION = 1

PROMPT_STRING_FIELDS = ("text", "label", "dataset", "split", "category", "generation")
RESID_ROWS_POST_INSTRUCTION = "post-instruction"
RESID_ROWS_ALL = "all"

# h5py's variable-length UTF-8 string type, shared by every string dataset.
STR = h5py.string_dtype(encoding="utf-8")


def layer_path(layer: int) -> str:
    return f"/layers/{layer}"


def check_study(file: h5py.File, path: str) -> None:
    """Refuse anything that is not a study file of a schema we can read, in one line."""
    if file.attrs.get("format") != FORMAT:
        raise StudyFileError(f"{path}: not a Refusal Explorer study file (no '{FORMAT}' marker)")
    try:
        version = int(file.attrs.get("schema_version", -1))
    except (TypeError, ValueError):
        raise StudyFileError(f"{path}: schema version {file.attrs.get('schema_version')!r} is not a number; the file is damaged") from None
    if version > SCHEMA_VERSION:
        raise StudyFileError(
            f"{path}: schema version {version} is newer than this refusal-explorer reads "
            f"({SCHEMA_VERSION}); upgrade refusal-explorer"
        )
    if version < 1:
        raise StudyFileError(f"{path}: unknown schema version {version}")
    layers = json_attr(file, "layers", None)
    if not isinstance(layers, list) or not layers or not all(isinstance(layer, int) for layer in layers):
        raise StudyFileError(f"{path}: the 'layers' attribute is missing or damaged ({file.attrs.get('layers')!r})")


def json_attr(file: h5py.File | h5py.Group, name: str, default: object = None) -> object:
    raw = file.attrs.get(name)
    try:
        return default if raw is None else json.loads(raw)
    except (TypeError, ValueError):
        raise StudyFileError(f"{file.file.filename}: attribute {name!r} is not valid JSON; the file is damaged") from None

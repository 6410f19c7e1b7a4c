"""Results of the explorer stages, under /analysis/<run>/<stage>.

A stage is a flat bag of named arrays plus JSON attributes and the stage's config, written as a
whole into a shadow copy of the study that replaces it by one rename (store.durable): a reader
never sees half a result, and a save killed at any instant leaves the previous study intact.
The save takes the study's writer lock (store.lock); a command that computes a stage should take
it before its expensive work (``study_lock``), so a second writer is refused before, not after.
The stage names and array names each stage writes are documented in ``explorer``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from store.durable import remove_stale_shadow, shadow_copy
from store.errors import StudyFileError
from store.lock import study_lock
from store.schema import STR, check_study


@dataclass(frozen=True, kw_only=True)
class AnalysisStage:
    run: str
    stage: str
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]
    config: dict[str, Any]


def _valid_name(kind: str, name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise StudyFileError(f"invalid {kind} name {name!r}: use letters, digits, '-' or '_'")


def write_stage(
    path: Path, run: str, stage: str, *, arrays: dict[str, np.ndarray], attrs: dict[str, Any], config: dict[str, Any]
) -> None:
    """Write (or replace) one stage's results atomically within the study file."""
    _valid_name("run", run)
    _valid_name("stage", stage)
    path = Path(path)
    if not path.is_file():
        raise StudyFileError(f"{path}: no such study file")
    with study_lock(path):
        remove_stale_shadow(path)
        with shadow_copy(path) as shadow:
            try:
                file = h5py.File(shadow, "r+", libver="latest", locking=False)
            except OSError as error:
                if "already open for" in str(error):
                    raise StudyFileError(
                        f"{path} was interrupted while caching; finish it with `refusal-explorer cache ... --resume` first"
                    ) from None
                raise StudyFileError(f"{path}: not a readable HDF5 file (corrupted or truncated?)") from error
            with file:
                check_study(file, str(path))
                _write_group(file, run, stage, arrays=arrays, attrs=attrs, config=config)


def _write_group(
    file: h5py.File, run: str, stage: str, *, arrays: dict[str, np.ndarray], attrs: dict[str, Any], config: dict[str, Any]
) -> None:
    group = file.require_group(f"analysis/{run}")
    if stage in group:
        del group[stage]  # the old result stays in the study until the shadow is renamed over it
    target = group.create_group(stage)
    for name, values in arrays.items():
        values = np.asarray(values)
        if values.dtype.kind in "UO":
            target.create_dataset(name, data=values.astype(object), dtype=STR)
        else:
            target.create_dataset(name, data=values)
    target.attrs["attrs"] = json.dumps(attrs, sort_keys=True, default=_json_default)
    target.attrs["config"] = json.dumps(config, sort_keys=True, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def stage_names(file: h5py.File, run: str) -> list[str]:
    group = file.get(f"analysis/{run}")
    return [] if group is None else sorted(name for name in group if not name.startswith("."))


def read_stage(file: h5py.File, run: str, stage: str) -> AnalysisStage | None:
    """One stage's results, or None when that stage has not been run."""
    group = file.get(f"analysis/{run}/{stage}")
    if group is None:
        return None
    arrays = {
        name: (group[name].asstr()[...] if group[name].dtype.kind == "O" else group[name][...]) for name in group
    }
    return AnalysisStage(
        run=run, stage=stage, arrays=arrays,
        attrs=json.loads(group.attrs.get("attrs", "{}")), config=json.loads(group.attrs.get("config", "{}")),
    )

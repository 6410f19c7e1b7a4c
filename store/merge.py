"""Join shard study files, cached by several processes or machines, into one study file.

A shard is an ordinary (unfinalized) study file whose ``identity`` carries a ``shard`` entry
``{"index", "count", "start", "stop", "total"}``: it holds prompts ``[start, stop)`` of a
prompt set of ``total`` prompts. Merging appends the committed rows of shards 0..count-1 in
order to a new study with the same spec and finalizes it; the identity loses its ``shard``
entry, so the merged file is the file a single process would have written (same datasets,
same identity), apart from the recorded run config and the creation time.

The merge writes beside the target (holding the target's writer lock) and renames it over the
target durably at the end: the target never holds a half merge, and an interrupted merge is simply
run again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from store.errors import StudyFileError
from store.schema import check_study, json_attr
from store.study import open_h5_readonly
from store.durable import replace_durably
from store.lock import study_lock
from store.layout import ROWS_PER_COPY, read_rows, spec_of
from store.writer import StudySpec, StudyWriter, require_study_file

SHARD_KEY = "shard"
"""The identity entry that marks a shard file."""

# Root attributes every shard must agree on (identity aside, which is compared without `shard`).
_SHARED_ATTRS = ("model_id", "model_revision", "layers", "d_model", "saes", "n_positions", "refusal_threshold")


def shard_path(out: Path, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` of study ``out`` lives: ``OUT.rank{r}-of-{n}.h5``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.rank{index}-of-{count}{out.suffix or '.h5'}")


def shard_info(file: h5py.File) -> dict[str, int] | None:
    """The ``shard`` entry of a study file's identity, or None for an ordinary study."""
    info = json_attr(file, "identity", {}).get(SHARD_KEY)
    return None if info is None else {key: int(value) for key, value in info.items()}


def _open_shard(path: Path) -> tuple[h5py.File, dict[str, int]]:
    file = open_h5_readonly(path)
    try:
        check_study(file, str(path))
        info = shard_info(file)
        if info is None:
            raise StudyFileError(f"{path} is a complete study, not a shard (shards are named OUT.rankR-of-N.h5)")
    except BaseException:
        file.close()
        raise
    return file, info


def _check_shards(paths: Sequence[Path], files: Sequence[h5py.File], infos: Sequence[dict[str, int]]) -> None:
    """Refuse, in one line, anything but a complete, consistent set of shards 0..count-1."""
    count = infos[0]["count"]
    indices = sorted(info["index"] for info in infos)
    if len(set(indices)) != len(indices):
        raise StudyFileError(f"shard {next(i for i in indices if indices.count(i) > 1)} is given twice")
    if indices != list(range(count)) or any(info["count"] != count for info in infos):
        missing = sorted(set(range(count)) - set(indices))
        hint = f"; missing shard(s) {', '.join(map(str, missing))}" if missing else ""
        raise StudyFileError(f"need all {count} shards (rank0-of-{count} … rank{count - 1}-of-{count}), got {len(paths)}{hint}")
    reference = files[0]
    base_identity = _identity_without_shard(reference)
    for path, file, info in zip(paths, files, infos):
        if _identity_without_shard(file) != base_identity:
            raise StudyFileError(f"{path} was cached with a different model, prompts or config than {paths[0]}")
        for name in _SHARED_ATTRS:
            if json.dumps(_attr(file, name)) != json.dumps(_attr(reference, name)):
                raise StudyFileError(f"{path} differs from {paths[0]} in {name}")
        committed = int(file["committed"][0])
        if committed != info["stop"] - info["start"]:
            raise StudyFileError(
                f"{path} is incomplete ({committed} of {info['stop'] - info['start']} prompts); finish it with cache --resume"
            )
    ordered = sorted(infos, key=lambda info: info["index"])
    if ordered[0]["start"] != 0 or ordered[-1]["stop"] != ordered[0]["total"] or any(
        a["stop"] != b["start"] for a, b in zip(ordered, ordered[1:])
    ):
        raise StudyFileError("the shards do not cover the prompt set contiguously (made with different batch sizes?)")


def _attr(file: h5py.File, name: str) -> Any:
    value = file.attrs[name]
    return value.item() if isinstance(value, np.generic) else value


def _identity_without_shard(file: h5py.File) -> dict[str, Any]:
    identity = dict(json_attr(file, "identity", {}))
    identity.pop(SHARD_KEY, None)
    return identity


def _spec_from(file: h5py.File, shard_paths: Sequence[Path]) -> StudySpec:
    """The merged study's spec: the shard's, with the shard marker dropped."""
    config = dict(json_attr(file, "config", {}))
    config.pop(SHARD_KEY, None)
    config["merged_from"] = [Path(path).name for path in shard_paths]
    return dataclasses.replace(spec_of(file), identity=_identity_without_shard(file), config=config)


def merge_shards(out: Path, shards: Sequence[Path], *, overwrite: bool = False) -> Path:
    """Merge complete shard files into the study ``out`` (see the module docstring)."""
    out = Path(out)
    shards = [Path(path) for path in shards]
    if not shards:
        raise StudyFileError("give the shard files to merge (OUT.rank0-of-N.h5 …)")
    if out.exists() and not overwrite:
        raise StudyFileError(f"{out} already exists; pass --overwrite to replace it")
    if any(path.resolve() == out.resolve() for path in shards if path.exists()):
        raise StudyFileError(f"{out} is one of the shards; choose another output path")
    missing = [str(path) for path in shards if not path.exists()]
    if missing:
        raise StudyFileError(f"shard file {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    with study_lock(out, "merge"):
        if out.exists():
            require_study_file(out, "overwrite")
        _merge_locked(out, shards)
    return out


def _merge_locked(out: Path, shards: Sequence[Path]) -> None:
    files: list[h5py.File] = []
    try:
        opened = []
        for path in shards:
            file, info = _open_shard(path)
            files.append(file)
            opened.append((info["index"], path, file, info))
        opened.sort(key=lambda item: item[0])
        paths, files_in_order, infos = [p for _, p, _, _ in opened], [f for _, _, f, _ in opened], [i for _, _, _, i in opened]
        _check_shards(paths, files_in_order, infos)
        spec = _spec_from(files_in_order[0], paths)
        partial = out.with_name(out.name + ".merging")
        with StudyWriter.create(partial, spec, overwrite=True, private=True) as writer:
            for file in files_in_order:
                n_rows = int(file["committed"][0])
                for start in range(0, n_rows, ROWS_PER_COPY):
                    writer.append(read_rows(file, spec.layers, start, min(n_rows, start + ROWS_PER_COPY)))
            writer.finalize()
        replace_durably(partial, out)
    finally:
        for file in files:
            file.close()

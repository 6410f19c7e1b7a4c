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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h5py

from store.durable import remove_stale_shadow, replace_durably, shadow_copy, shadow_path
from store.errors import StudyFileError
from store.finalize import build_latent_index
from store.layout import (  # noqa: F401  (PromptBatch, StudySpec, _extend: the writer's public face, as before)
    ROWS_PER_COPY,
    PromptBatch,
    StudySpec,
    _extend,
    append_rows,
    create_layout,
    read_rows,
    spec_of,
    truncate_to_committed,
)
from store.lock import study_lock
from store.schema import check_study, json_attr
from store.study import open_h5_readonly


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
    shadow = shadow_path(path)
    try:
        with open_h5_readonly(path) as source, h5py.File(shadow, "w", libver="latest", locking=False) as copy:
            spec = spec_of(source)
            create_layout(copy, spec)
            for key, value in source.attrs.items():
                copy.attrs[key] = value  # created_at, versions, …: exactly as the study had them
            n_committed = int(source["committed"][0])
            for start in range(0, n_committed, ROWS_PER_COPY):
                append_rows(copy, spec.layers, read_rows(source, spec.layers, start, min(n_committed, start + ROWS_PER_COPY)))
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
        self._n_committed = truncate_to_committed(file)
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
                create_layout(file, spec)
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
        append_rows(file, self._layers, batch)
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


def _finalize_file(path: Path, memory_budget_bytes: int) -> None:
    with h5py.File(path, "r+", libver="latest", locking=False) as file:
        truncate_to_committed(file)
        build_latent_index(file, memory_budget_bytes=memory_budget_bytes)
        file.attrs["complete"] = True

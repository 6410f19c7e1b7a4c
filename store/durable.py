"""Durable file replacement: a new version of a study is written beside it, then renamed over it.

Every write to a study that is not a plain append (finalize, an analysis save, the recovery of a
killed cache run, a merge) works on a *shadow*: a private copy next to the study. The study
itself changes only by ``rename(2)``, which is atomic, so at every instant the path names either
the whole old study or the whole new one. For power loss, the shadow is fsynced before the rename
and the directory after it (docs/DURABILITY.md has the per-operation guarantees).

The copy is as cheap as the filesystem allows: a reflink (FICLONE: instant and space-free on
btrfs and XFS), else ``copy_file_range`` (in-kernel, no round trip through Python).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from store.errors import StudyFileError

SHADOW_SUFFIX = ".tmp"
"""A study's shadow is ``STUDY.tmp``; one writer at a time (store.lock), so one name suffices."""

_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_COPY_STEP = 1 << 30


def shadow_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SHADOW_SUFFIX)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path``'s directory durable."""
    fsync_path(Path(path).parent if not Path(path).is_dir() else Path(path))


def replace_durably(source: Path, target: Path) -> None:
    """fsync ``source``, rename it over ``target``, fsync the directory."""
    fsync_path(source)
    os.replace(source, target)
    fsync_dir(target)


def remove_stale_shadow(path: Path) -> None:
    """Delete a shadow left by a killed writer (the caller holds the study's lock)."""
    shadow = shadow_path(path)
    if shadow.exists():
        shadow.unlink()
        fsync_dir(path)


def clone_file(source: Path, target: Path) -> None:
    """Byte copy ``source`` to a new ``target``: a reflink where possible, else in the kernel."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            return
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM):
                raise
        size = os.fstat(src.fileno()).st_size
        copied = 0
        while copied < size:
            step = os.copy_file_range(src.fileno(), dst.fileno(), min(_COPY_STEP, size - copied), copied, copied)
            if step == 0:
                raise StudyFileError(f"{source}: file shrank while it was being copied")
            copied += step


@contextmanager
def shadow_copy(path: Path) -> Iterator[Path]:
    """Yield a private copy of ``path`` to modify; on success it replaces ``path`` durably.

    On an exception (or a kill) ``path`` is untouched; the shadow is removed, or left for the
    next writer to remove (``remove_stale_shadow``)."""
    path = Path(path)
    shadow = shadow_path(path)
    try:
        clone_file(path, shadow)
        yield shadow
        replace_durably(shadow, path)
    except OSError as error:
        shadow.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise StudyFileError(
                f"no disk space left to write {path} (a save needs room for a full copy of the study beside it); "
                "the study is unchanged"
            ) from error
        raise
    except BaseException:
        shadow.unlink(missing_ok=True)
        raise

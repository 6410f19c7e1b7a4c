"""One writer per study: an OS-level lock on ``STUDY.lock``, beside the study.

The lock is ``flock(2)`` on the lock file, which the kernel releases when its holder exits in
any way (``kill -9`` included), so a lock file left behind by a dead writer is stale by
construction: the next writer takes it over. The file's content (pid, host, command, start time)
only names the holder in the one-line refusal a second writer gets. Readers take no lock: they
read the study through HDF5's single-writer/multiple-reader mode and never block a writer.

Reentrant within one process: ``cache`` holds the lock while its writer and its finalize take it
again, and an ``analyze`` command holds it from before the model loads until its save.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from store.errors import StudyFileError

LOCK_SUFFIX = ".lock"

_held: dict[str, tuple[int, int]] = {}  # resolved study path -> (fd, depth)
_guard = threading.Lock()


class StudyBusyError(StudyFileError):
    """Another process is writing the study."""


def lock_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + LOCK_SUFFIX)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    where = "" if info.get("host") == socket.gethostname() else f" on {info.get('host')}"
    return f"pid {info.get('pid')}{where} ({info.get('command', '?')}, since {info.get('since', '?')})"


def _acquire(path: Path, purpose: str) -> int:
    lock = lock_path(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            reason = "permission denied" if error.errno in (errno.EACCES, errno.EROFS, errno.EPERM) else error.strerror
            raise StudyFileError(f"cannot write in {lock.parent} ({reason}); choose a writable directory for the study") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StudyBusyError(
                f"{path} is being written by {holder}; wait for it to finish or stop it (one writer per study)"
            ) from None
        # The previous holder may have unlinked the file between our open and our flock: then we
        # hold a lock on a file nobody else will see; start again on the current one.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        record = {
            "pid": os.getpid(), "host": socket.gethostname(), "command": purpose,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return fd


@contextmanager
def study_lock(path: Path, purpose: str | None = None) -> Iterator[None]:
    """Hold the study's writer lock for the block; a second writer gets ``StudyBusyError``."""
    key = os.path.realpath(path)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
        else:
            fd = _acquire(Path(path), purpose or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200])
            _held[key] = (fd, 1)
    try:
        yield
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                # unlink while still holding it, so a waiting writer re-checks the inode (above)
                try:
                    os.unlink(lock_path(Path(path)))
                except FileNotFoundError:
                    pass
                os.close(fd)


def holds_lock(path: Path) -> bool:
    return os.path.realpath(path) in _held

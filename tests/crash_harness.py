"""Kill a command at its N-th write, with strace's syscall fault injection (SQLite-style crash tests).

``strace -f -e inject=pwrite64:signal=KILL:when=N CMD`` delivers SIGKILL to CMD as it enters its
N-th ``pwrite64``: the write never happens, exactly like ``kill -9`` (or a power cut, for the
writes already fsynced) at that instant. HDF5 writes with ``pwrite64``; renames, fsyncs and
the shadow copy's ``copy_file_range`` are the other instants where a writer can die.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from store.study import open_h5_readonly

STRACE = shutil.which("strace") or "/usr/bin/strace"
ROOT = Path(__file__).resolve().parents[1]
KILL_POINTS = ("pwrite64", "fsync", "rename", "copy_file_range")
"""The syscalls a writer is killed at: every HDF5 write, every fsync, every rename, every copy."""


def strace_available() -> bool:
    if not Path(STRACE).exists():
        return False
    probe = subprocess.run([STRACE, "-qq", "-o", "/dev/null", "true"], capture_output=True)
    return probe.returncode == 0


def scenario_argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "tests.crash_scenarios", *map(str, args)]


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=ROOT, env=_env(), capture_output=True, text=True, **kwargs)


def count_calls(argv: Sequence[str], syscalls: Sequence[str] = KILL_POINTS, log: Path | None = None) -> dict[str, int]:
    """How often an uninterrupted run of ``argv`` enters each syscall (all threads)."""
    log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"crash-count-{os.getpid()}.log"
    result = run([STRACE, "-f", "-qq", "-o", str(log), "-e", f"trace={','.join(syscalls)}", *argv])
    assert result.returncode == 0, result.stderr
    counts = dict.fromkeys(syscalls, 0)
    for line in log.read_text().splitlines():
        name = line.split("(", 1)[0].split()[-1] if "(" in line else ""
        if name in counts:
            counts[name] += 1
    log.unlink()
    return counts


def kill_at(argv: Sequence[str], syscall: str, n: int) -> bool:
    """Run ``argv`` and SIGKILL it as it enters its ``n``-th ``syscall``; True when it was killed."""
    result = run([STRACE, "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                  "-e", f"inject={syscall}:signal=KILL:when={n}", *argv])
    return result.returncode in (-9, 137)


def sample(total: int, k: int) -> list[int]:
    """``k`` instants spread over 1..total, always with the first and the last."""
    if total <= k:
        return list(range(1, total + 1))
    return sorted({int(round(x)) for x in np.linspace(1, total, k)})


def dump(path: Path) -> dict[str, np.ndarray]:
    """Every dataset's contents and the attributes that define the study, read as readers do."""
    out: dict[str, np.ndarray] = {}
    with open_h5_readonly(path) as file:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = obj.asstr()[...] if obj.dtype.kind == "O" else obj[...]
            for key, value in getattr(obj, "attrs", {}).items():
                if isinstance(obj, h5py.Group) and name.startswith("analysis"):
                    out[f"{name}@{key}"] = np.asarray(value)
        file.visititems(visit)
        for key in ("identity", "config", "layers", "complete", "schema_version"):
            out[f"@{key}"] = np.asarray(file.attrs[key])
    return out


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, ignore: Sequence[str] = ()) -> bool:
    keys = set(a) - set(ignore)
    if keys != set(b) - set(ignore):
        return False
    return all(a[key].shape == b[key].shape and _equal(a[key], b[key]) for key in keys)


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal contents; NaN equals NaN (a stored 'not measured' is the same in both)."""
    numeric = a.dtype.kind in "fc" and b.dtype.kind in "fc"
    return bool(np.array_equal(a, b, equal_nan=numeric))


@dataclass
class SweepReport:
    """What a sweep did: instants killed, studies recovered, seconds per killed run + recovery."""

    scenario: str
    killed: int = 0
    recovered: int = 0
    not_reached: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        per = self.seconds / max(self.killed, 1)
        return f"{self.scenario}: {self.killed} instants killed, {self.recovered} recovered, {per:.2f} s per kill + recovery"

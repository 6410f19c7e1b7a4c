"""What crash safety costs on a ~1M-token study (issue 14; docs/DURABILITY.md).

    python bench/bench_durability.py [--dir /tmp/durability] [--tokens-scale 1.0]

Builds (once) the ~1M-token, 65,536-latent synthetic study of bench/bench_tui.py, then times,
in one run, each crash-safe operation against the unsafe way it replaced:

- finalize on a shadow copy renamed over the study vs in place (the old way: a kill left an
  unreadable file);
- an analysis save (a small stage and a large one) on a shadow copy vs in place;
- appending with an fsync per batch vs without;
- the recovery of a killed cache run (its committed rows rewritten into a fresh file).

Prints seconds and ratios; the ratios are the result (absolute times depend on the disk).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from unittest import mock

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.synthetic import SyntheticConfig, make_synthetic_study  # noqa: E402
from store import Study, StudyWriter, write_stage  # noqa: E402
from store.analysis import _write_group  # noqa: E402
from store.durable import clone_file  # noqa: E402
from store.finalize import build_latent_index  # noqa: E402
from store.layout import ROWS_PER_COPY, read_rows, spec_of  # noqa: E402
from store.writer import _recover_killed_writer  # noqa: E402


CONFIG = SyntheticConfig(
    n_prompts=48_800, words_per_prompt=(6, 20), d_sae=65536, active_per_token=50, batch_prompts=4096,
)
"""bench/bench_tui.py's study: ~1.0M tokens (20.5 per prompt), 65,536 latents, ~50 active per token."""


def timed(function, *args, **kwargs) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def drop_index(path: Path) -> None:
    with h5py.File(path, "r+", locking=False) as file:
        for layer in file["layers"]:
            if "by_feature" in file[f"layers/{layer}"]:
                del file[f"layers/{layer}/by_feature"]
        file.attrs["complete"] = False


def finalize_in_place(path: Path) -> None:
    with h5py.File(path, "r+", libver="latest", locking=False) as file:
        build_latent_index(file)
        file.attrs["complete"] = True


def finalize_shadowed(path: Path) -> None:
    writer = StudyWriter.__new__(StudyWriter)  # finalize alone, on an existing unfinalized study
    writer.path, writer._private = path, False
    writer._file = h5py.File(path, "r", locking=False)
    writer.finalize()
    writer._file.close()


def save_in_place(path: Path, arrays: dict) -> None:
    with h5py.File(path, "r+", libver="latest", locking=False) as file:
        _write_group(file, "bench", "stage", arrays=arrays, attrs={"x": 1}, config={})


def append_rate(study: Path, scratch: Path, *, fsync: bool) -> float:
    """Seconds to append the first 8,192 prompts of ``study`` into a new study, in batches of 64."""
    with h5py.File(study, "r", locking=False) as source:
        spec = spec_of(source)
        batches = [read_rows(source, spec.layers, start, start + 64) for start in range(0, 8192, 64)]
    spec = dataclasses.replace(spec, identity={"bench": fsync})
    with mock.patch("store.writer.os.fsync") if not fsync else contextlib.nullcontext():
        started = time.perf_counter()
        with StudyWriter.create(scratch, spec, overwrite=True) as writer:
            for batch in batches:
                writer.append(batch)
        elapsed = time.perf_counter() - started
    scratch.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/durability"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    study = args.dir / "study-1m.h5"
    if not study.exists():
        print(f"building {study} …", flush=True)
        print(f"  built in {timed(make_synthetic_study, study, CONFIG):.0f} s")
    with Study(study) as opened:
        tokens, prompts = int(opened.token_offsets[-1]), opened.n_prompts
    size = study.stat().st_size
    print(f"study: {prompts:,} prompts, {tokens:,} tokens, {size / 2**20:,.0f} MiB")
    work = args.dir / "work.h5"

    clone = timed(clone_file, study, work)
    print(f"clone (the shadow copy): {clone:.2f} s = {size / 2**20 / clone:,.0f} MiB/s")

    drop_index(work)
    base = args.dir / "unfinalized.h5"
    shutil.copyfile(work, base)
    in_place = timed(finalize_in_place, work)
    shutil.copyfile(base, work)
    shadowed = timed(finalize_shadowed, work)
    print(f"finalize: in place {in_place:.2f} s, on a shadow copy {shadowed:.2f} s  (×{shadowed / in_place:.2f})")

    shutil.copyfile(study, work)
    for label, arrays in (
        ("small stage (direction-sized, 4 KiB)", {"v": np.ones(1024, np.float32)}),
        ("large stage (64 MiB of experiments)", {"design": np.ones((65536, 1024), np.int8)}),
    ):
        in_place = timed(save_in_place, work, arrays)
        shadowed = timed(write_stage, work, "bench", "stage", arrays=arrays, attrs={"x": 1}, config={})
        print(f"save {label}: in place {in_place:.2f} s, on a shadow copy {shadowed:.2f} s  (+{shadowed - in_place:.2f} s)")

    plain = append_rate(study, args.dir / "append.h5", fsync=False)
    synced = append_rate(study, args.dir / "append.h5", fsync=True)
    print(f"append 8,192 prompts in 128 batches: no fsync {plain:.2f} s, fsync per batch {synced:.2f} s  (×{synced / plain:.2f})")

    shutil.copyfile(base, work)
    recover = timed(_recover_killed_writer, work)
    print(f"recovery of a killed cache run (committed rows rewritten): {recover:.2f} s "
          f"= {tokens / recover / 1e3:,.0f}k tokens/s ({ROWS_PER_COPY} prompts per copy step)")
    for path in (work, base):
        path.unlink(missing_ok=True)
    os.sync()


if __name__ == "__main__":
    main()

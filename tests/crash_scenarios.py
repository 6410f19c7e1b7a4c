"""The writes the crash tests kill: run as ``python -m tests.crash_scenarios SCENARIO ...``.

Each scenario is what a command does to a study, on the small deterministic study of
``tests.study_factory`` (no model, so a run takes a fraction of a second and the harness can
kill it at every write):

    cache PATH             create PATH, or resume it when it exists, append 6 batches, finalize
    save PATH SOURCE       copy every analysis stage of the study SOURCE into PATH, one save each
                           (the real StageResult.save of each stage type)
    merge OUT SHARD...     merge shard files into OUT (replacing OUT when it exists)
    shards OUT N           write N complete shard files of OUT for the merge scenario
    hold PATH SECONDS      resume PATH as its writer and sit on the lock (concurrency tests)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from store import Study, StudyWriter
from tests.study_factory import batch, spec

N_BATCHES = 6
BATCH = 4


def cache(path: Path) -> None:
    writer = StudyWriter.resume(path, spec()) if path.exists() else StudyWriter.create(path, spec())
    with writer:
        if writer.complete:
            return
        for index in range(writer.n_committed // BATCH, N_BATCHES):
            writer.append(batch(index))
        writer.finalize()


def save(path: Path, source: Path) -> None:
    from explorer.results import RESULT_TYPES

    with Study(source) as study:
        results = [(kind.load(study, "default"), kind.config_of(study, "default")) for kind in RESULT_TYPES]
    for result, config in results:
        result.save(path, "default", config=config)


def shards(out: Path, count: int) -> list[Path]:
    import dataclasses

    from store.merge import SHARD_KEY, shard_path

    paths = []
    per = N_BATCHES // count
    for index in range(count):
        start, stop = index * per * BATCH, (index + 1) * per * BATCH
        info = {"index": index, "count": count, "start": start, "stop": stop, "total": N_BATCHES * BATCH}
        base = spec()
        shard_spec = dataclasses.replace(base, identity=base.identity | {SHARD_KEY: info})
        path = shard_path(out, index, count)
        with StudyWriter.create(path, shard_spec, overwrite=True) as writer:
            for number in range(index * per, (index + 1) * per):
                writer.append(batch(number))
        paths.append(path)
    return paths


def merge(out: Path, parts: list[Path]) -> None:
    from store.merge import merge_shards

    merge_shards(out, parts, overwrite=True)


def hold(path: Path, seconds: float) -> None:
    with StudyWriter.resume(path, spec()):
        print("holding", flush=True)
        time.sleep(seconds)


def main(argv: list[str]) -> None:
    scenario, path = argv[0], Path(argv[1])
    if scenario == "cache":
        cache(path)
    elif scenario == "save":
        save(path, Path(argv[2]))
    elif scenario == "merge":
        merge(path, [Path(arg) for arg in argv[2:]])
    elif scenario == "shards":
        shards(path, int(argv[2]))
    elif scenario == "hold":
        hold(path, float(argv[2]))
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main(sys.argv[1:])

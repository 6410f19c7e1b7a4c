"""Crash tests: kill -9 a writer at its N-th write and check that no study is ever lost.

Each writing operation (cache with its finalize, the resume of a killed cache, every analysis
stage's save, merge) runs in a subprocess under strace, which kills it as it enters a chosen
write, fsync, rename or copy (tests.crash_harness). After every kill the study must open and
hold either its state before the operation or a committed prefix of it, and rerunning the
operation (``--resume`` for cache) must end in exactly the contents of an uninterrupted run.

The default suite kills at a few sampled instants of each operation; the ``slow`` sweep kills
at every instant and prints the counts (docs/DURABILITY.md records them).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from store import Study
from tests.crash_harness import (
    KILL_POINTS,
    SweepReport,
    count_calls,
    dump,
    kill_at,
    run,
    same,
    sample,
    scenario_argv,
    strace_available,
)
from tests.crash_scenarios import BATCH, N_BATCHES

pytestmark = pytest.mark.skipif(not strace_available(), reason="needs a working strace (fault injection)")


@dataclass
class References:
    root: Path
    cache: dict  # the uninterrupted cache run
    saved: dict  # that study after every stage's save
    merged: dict  # the merge of two shards
    synthetic: Path  # the source of the stages' results
    shards: list[Path]
    killed_mid_cache: Path  # a study whose cache run was killed mid-append (SWMR flag set)
    counts: dict[str, dict[str, int]]


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[References]:
    from tests.synthetic import make_synthetic_study

    root = tmp_path_factory.mktemp("crash")
    cache = root / "cache.h5"
    counts = {"cache": count_calls(scenario_argv("cache", cache))}
    synthetic = make_synthetic_study(root / "synthetic.h5")
    saved = root / "saved.h5"
    shutil.copyfile(cache, saved)
    counts["save"] = count_calls(scenario_argv("save", saved, synthetic))
    assert run(scenario_argv("shards", root / "merged.h5", 2)).returncode == 0
    shards = [root / "merged.rank0-of-2.h5", root / "merged.rank1-of-2.h5"]
    counts["merge"] = count_calls(scenario_argv("merge", root / "merged.h5", *shards))
    killed = root / "killed.h5"
    assert kill_at(scenario_argv("cache", killed), "pwrite64", counts["cache"]["pwrite64"] // 2)
    resume_copy = root / "resume-count.h5"
    shutil.copyfile(killed, resume_copy)
    counts["resume"] = count_calls(scenario_argv("cache", resume_copy))
    yield References(
        root=root, cache=dump(cache), saved=dump(saved), merged=dump(root / "merged.h5"), synthetic=synthetic,
        shards=shards, killed_mid_cache=killed, counts=counts,
    )


def _fresh(refs: References, name: str) -> Path:
    work = refs.root / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    return work / name


def _check_cache_state(path: Path, refs: References) -> None:
    """After a kill: no study yet, or one that opens and holds a committed prefix of the run."""
    if not path.exists():
        return  # killed before the new study was renamed into place: nothing existed to lose
    with Study(path) as study:
        assert study.n_prompts % BATCH == 0 and study.n_prompts <= N_BATCHES * BATCH
        expected = refs.cache["prompts/text"][: study.n_prompts]
        assert list(study.column("text")) == list(expected)


def _sweep(refs: References, scenario: str, instants: dict[str, list[int]]) -> SweepReport:
    report = SweepReport(scenario)
    for syscall, numbers in instants.items():
        for n in numbers:
            started = time.perf_counter()
            if scenario in ("cache", "resume"):
                path = _fresh(refs, "study.h5")
                if scenario == "resume":
                    shutil.copyfile(refs.killed_mid_cache, path)
                argv, expected = scenario_argv("cache", path), refs.cache
            elif scenario == "save":
                path = _fresh(refs, "study.h5")
                shutil.copyfile(refs.root / "cache.h5", path)
                argv, expected = scenario_argv("save", path, refs.synthetic), refs.saved
            else:
                path = _fresh(refs, "merged.h5")
                shards = [path.with_name(shard.name) for shard in refs.shards]
                for shard, copy in zip(refs.shards, shards):
                    shutil.copyfile(shard, copy)
                argv, expected = scenario_argv("merge", path, *shards), refs.merged
            killed = kill_at(argv, syscall, n)
            if not killed:
                report.not_reached += 1
                continue
            report.killed += 1
            where = f"{scenario} killed at {syscall} #{n}"
            if scenario in ("cache", "resume"):
                _check_cache_state(path, refs)
            elif scenario == "save":  # the study before the saves, or after one or more whole saves
                before = dump(refs.root / "cache.h5")
                now = dump(path)
                assert all(same({k: now[k]}, {k: before[k]}) for k in before if not k.startswith("analysis")), where
                assert all(same({k: now[k]}, {k: expected[k]}) for k in now if k.startswith("analysis")), where
            elif path.exists():
                assert same(dump(path), expected), where  # a merge is there whole or not at all
            result = run(argv)
            assert result.returncode == 0, f"{where}: rerun failed: {result.stderr[-2000:]}"
            assert same(dump(path), expected), f"{where}: the rerun's contents differ from an uninterrupted run"
            report.recovered += 1
            report.seconds += time.perf_counter() - started
    return report


def _sampled(scenario: str, counts: dict[str, int]) -> dict[str, list[int]]:
    """A few instants per operation for the default suite: mid-way through its writes, and the
    last renames (a finalize's or a save's swap of the shadow for the study)."""
    writes = counts["pwrite64"]
    instants = {"pwrite64": [writes // 2], "rename": [counts["rename"]]}
    if scenario == "cache":  # the last writes are finalize's: kill inside it, and at its last fsync
        instants["pwrite64"].append(writes - 5)
        instants["fsync"] = [counts["fsync"]]
    return instants


@pytest.mark.parametrize("scenario", ["cache", "resume", "save", "merge"])
def test_kill_at_sampled_instants_loses_nothing(refs: References, scenario: str) -> None:
    report = _sweep(refs, scenario, _sampled(scenario, refs.counts[scenario]))
    print(report.line())
    assert report.killed >= 2 and report.recovered == report.killed


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["cache", "resume", "save", "merge"])
def test_kill_at_every_instant_loses_nothing(refs: References, scenario: str) -> None:
    counts = refs.counts[scenario]
    report = _sweep(refs, scenario, {syscall: list(range(1, counts[syscall] + 1)) for syscall in KILL_POINTS})
    print(f"\n{report.line()} (of {counts})")
    assert report.killed == sum(counts.values()) and report.recovered == report.killed

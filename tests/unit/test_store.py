import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from store import Study, StudyFileError, StudyWriter, read_stage, stage_names, write_stage
from store.writer import _extend
from tests.study_factory import D_SAE, batch, dump, spec

N_BATCHES = 6


def write_all(path: Path, *, start: int = 0, writer: StudyWriter | None = None, resid_rows: str = "post-instruction") -> None:
    writer = writer or StudyWriter.create(path, spec(resid_rows=resid_rows))
    with writer:
        assert writer.n_committed == start * 4
        for index in range(start, N_BATCHES):
            writer.append(batch(index, resid_rows=resid_rows))
        writer.finalize()


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture
def reference(tmp_path: Path) -> dict:
    write_all(tmp_path / "reference.h5")
    return dump(tmp_path / "reference.h5")


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    write_all(path)
    with Study(path) as study:
        assert study.n_prompts == 4 * N_BATCHES
        assert study.meta.complete and study.meta.layers == (1, 2)
        record = study.prompt(5)
        expected = batch(1)
        assert record.text == expected.text[1] and record.label == expected.label[1]
        np.testing.assert_array_equal(record.token_ids, expected.token_ids[1])
        assert record.tokens == [f"tok{i}" for i in expected.token_ids[1]]
        resid = study.resid(2, np.array([4, 5]))
        np.testing.assert_array_equal(resid.reshape(-1, 8), expected.resid[2][:4].astype(np.float32))
        indptr, indices, values = study.codes(2).prompt_codes(5)
        first = len(expected.token_ids[0])
        rows = slice(first, first + len(expected.token_ids[1]))
        ex_indptr = expected.codes[2][0][rows.start : rows.stop + 1]
        np.testing.assert_array_equal(indptr, ex_indptr - ex_indptr[0])
        np.testing.assert_array_equal(indices, expected.codes[2][1][ex_indptr[0] : ex_indptr[-1]])
        summary = study.summary()
        assert summary["prompts"] == {"harmful": 12, "harmless": 12}
        assert set(summary["refusal_rate"]) == {"harmful", "harmless"}


def test_all_token_residuals_gather_post_instruction_positions(tmp_path: Path) -> None:
    path = tmp_path / "all.h5"
    write_all(path, resid_rows="all")
    with Study(path) as study:
        expected = batch(2, resid_rows="all")
        lengths = [len(t) for t in expected.token_ids]
        last_two = expected.resid[1][lengths[0] - 2 : lengths[0]].astype(np.float32)
        np.testing.assert_array_equal(study.resid(1, np.array([8]))[0], last_two)


def test_latent_index_matches_brute_force(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    write_all(path)
    with h5py.File(path, "r+") as file:  # rebuild with a tiny budget: many latent blocks
        from store.finalize import build_latent_index
        build_latent_index(file, memory_budget_bytes=200)
    with Study(path) as study:
        codes = study.codes(2)
        offsets = study.token_offsets
        dense = {}
        for prompt in range(study.n_prompts):
            indptr, indices, values = codes.prompt_codes(prompt)
            for row in range(len(indptr) - 1):
                for j in range(indptr[row], indptr[row + 1]):
                    dense.setdefault(int(indices[j]), []).append((offsets[prompt] + row, values[j], prompt, row))
        for latent in range(D_SAE):
            rows, values = codes.latent_entries(latent)
            expected = dense.get(latent, [])
            np.testing.assert_array_equal(rows, [e[0] for e in expected])
            np.testing.assert_array_equal(values, [e[1] for e in expected])
            top = codes.top_activations(latent, k=3)
            best = {}
            for _, value, prompt, row in expected:
                if prompt not in best or value > best[prompt][1]:
                    best[prompt] = (row, value)
            want = sorted(best.items(), key=lambda item: -item[1][1])[:3]
            assert [t[2] for t in top] == pytest.approx([w[1][1] for w in want])
        stats = codes.stats()
        assert list(stats["labels"]) == ["harmful", "harmless"]
        harmful = study.labels == "harmful"
        active_prompts = np.zeros(D_SAE)
        for prompt in np.flatnonzero(harmful):
            active_prompts[np.unique(codes.prompt_codes(prompt)[1])] += 1
        np.testing.assert_allclose(stats["prompt_freq"][0], active_prompts / harmful.sum(), rtol=1e-6)
        np.testing.assert_allclose(stats["decoder_norm"], np.linspace(0.5, 1.5, D_SAE), rtol=1e-6)


def test_resume_after_uncommitted_rows_gives_identical_file(tmp_path: Path, reference: dict) -> None:
    path = tmp_path / "s.h5"
    with StudyWriter.create(path, spec()) as writer:
        for index in range(3):
            writer.append(batch(index))
        # a crash in the middle of batch 3: some datasets grew, the counter did not advance
        _extend(writer._file["prompts/text"], np.array(["half-written"], dtype=object))
        _extend(writer._file["tokens/ids"], np.arange(7, dtype=np.int32))
    with Study(path) as study:
        assert study.n_prompts == 12 and not study.meta.complete
    write_all(path, start=3, writer=StudyWriter.resume(path, spec()))
    assert_same(dump(path), reference)


CRASHING_WRITER = """
import os, sys, time
sys.path.insert(0, {root!r})
from store import StudyWriter
from tests.study_factory import batch, spec
writer = StudyWriter.create({path!r}, spec())
for index in range(6):
    writer.append(batch(index))
    if index == 2:
        print("committed", flush=True)
        time.sleep(60)
"""


def test_resume_after_kill_9_gives_identical_file(tmp_path: Path, reference: dict) -> None:
    path = tmp_path / "s.h5"
    root = str(Path(__file__).resolve().parents[2])
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER.format(root=root, path=str(path))], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "committed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with Study(path) as study:  # readable while flagged as open-for-write
        assert study.n_prompts == 12
    write_all(path, start=3, writer=StudyWriter.resume(path, spec()))
    assert_same(dump(path), reference)
    assert not path.with_name(path.name + ".tmp").exists()


def test_create_refuses_existing_file_and_overwrite_replaces(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    path.write_bytes(b"precious")
    with pytest.raises(StudyFileError, match="already exists.*--resume.*--overwrite"):
        StudyWriter.create(path, spec())
    assert path.read_bytes() == b"precious"
    with pytest.raises(StudyFileError, match="refusing to overwrite .*not a Refusal Explorer study file"):
        StudyWriter.create(path, spec(), overwrite=True)
    assert path.read_bytes() == b"precious"  # --overwrite replaces studies only
    path.unlink()
    write_all(path)
    StudyWriter.create(path, spec(), overwrite=True).close()
    with Study(path) as study:
        assert study.n_prompts == 0


def test_resume_refuses_other_config(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with StudyWriter.create(path, spec()) as writer:
        writer.append(batch(0))
    before = dump(path)
    with pytest.raises(StudyFileError, match="different model or config \\(model: the file has 'tiny', this run has 'other'\\)"):
        StudyWriter.resume(path, spec(identity="other"))
    assert_same(dump(path), before)
    with pytest.raises(StudyFileError, match="nothing to resume"):
        StudyWriter.resume(tmp_path / "missing.h5", spec())


def test_refuses_files_that_are_not_studies(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError, match="no such file"):
        Study(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(StudyFileError, match="not a readable HDF5 file"):
        Study(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as file:
        file["x"] = 1
    with pytest.raises(StudyFileError, match="not a Refusal Explorer study file"):
        Study(other)


def test_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    StudyWriter.create(path, spec()).close()
    with h5py.File(path, "r+") as file:
        file.attrs["schema_version"] = 99
    with pytest.raises(StudyFileError, match="schema version 99 is newer"):
        Study(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    write_all(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(StudyFileError):
        with Study(path) as study:
            study.prompt(study.n_prompts - 1)
            study.codes(2).latent_entries(0)


def test_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    write_all(path)
    with Study(path) as study:
        with pytest.raises(StudyFileError, match="layer 7 is not in this study \\(layers: 1, 2\\)"):
            study.resid(7)
        with pytest.raises(StudyFileError, match="layer 1 has no SAE codes"):
            study.codes(1)
        with pytest.raises(StudyFileError, match="latent 999 is out of range"):
            study.codes(2).latent_entries(999)
        with pytest.raises(StudyFileError, match="prompt 99 is out of range"):
            study.prompt(99)


def test_analysis_stage_round_trip_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    write_all(path)
    arrays = {"latent": np.array([3, 1]), "score": np.array([0.5, -1.0], np.float32), "name": np.array(["a", "b"])}
    write_stage(path, "run1", "greedy", arrays=arrays, attrs={"layer": np.int64(2)}, config={"k": 10})
    write_stage(path, "run1", "greedy", arrays={"latent": np.array([7])}, attrs={}, config={"k": 1})
    with Study(path) as study:
        assert study.analysis_runs() == ["run1"]
        assert stage_names(study.file, "run1") == ["greedy"]
        stage = read_stage(study.file, "run1", "greedy")
        assert stage.config == {"k": 1} and list(stage.arrays) == ["latent"]
        assert read_stage(study.file, "run1", "fm") is None
    with pytest.raises(StudyFileError, match="invalid run name"):
        write_stage(path, "a/b", "x", arrays={}, attrs={}, config={})

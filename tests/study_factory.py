"""Deterministic synthetic study content for store tests (batch i is the same in every process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from typing import TYPE_CHECKING

import h5py
import numpy as np

if TYPE_CHECKING:  # pytest stays unimported in the crash tests' subprocesses (tests.crash_scenarios)
    import pytest

from store import PromptBatch, StudySpec, StudyWriter

D_MODEL, D_SAE, N_POSITIONS, VOCAB = 8, 32, 2, 50


def spec(*, identity: str = "tiny", resid_rows: str = "post-instruction") -> StudySpec:
    return StudySpec(
        model_id="tiny-model", layers=(1, 2), d_model=D_MODEL, n_positions=N_POSITIONS, resid_rows=resid_rows,
        vocab=tuple(f"tok{i}" for i in range(VOCAB)), sae_layers={2: D_SAE},
        sae_arrays={2: {"decoder_norm": np.linspace(0.5, 1.5, D_SAE).astype(np.float32)}},
        identity={"model": identity}, config={"model": identity, "batch_size": 4}, refusal_threshold=0.0,
    )


def batch(index: int, size: int = 4, *, resid_rows: str = "post-instruction") -> PromptBatch:
    rng = np.random.default_rng(1000 + index)
    ids = [rng.integers(0, VOCAB, rng.integers(N_POSITIONS + 1, 9)).astype(np.int32) for _ in range(size)]
    n_tokens = sum(len(t) for t in ids)
    per_token = rng.integers(0, 5, n_tokens)
    indptr = np.concatenate([[0], np.cumsum(per_token)]).astype(np.int64)
    indices = np.concatenate([np.sort(rng.choice(D_SAE, k, replace=False)) for k in per_token]).astype(np.int32)
    n_rows = size * N_POSITIONS if resid_rows == "post-instruction" else n_tokens
    return PromptBatch(
        text=[f"prompt {index}.{j} é" for j in range(size)],
        label=["harmful" if (index + j) % 2 else "harmless" for j in range(size)],
        dataset=["synthetic"] * size, split=["train"] * size, category=[""] * size,
        generation=[f"answer {index}.{j}" for j in range(size)], token_ids=ids,
        refusal_score=rng.normal(size=size).astype(np.float32), refused=rng.integers(-1, 2, size).astype(np.int8),
        resid={layer: rng.normal(size=(n_rows, D_MODEL)).astype(np.float16) for layer in (1, 2)},
        codes={2: (indptr, indices, rng.random(len(indices)).astype(np.float32) + 0.1)},
    )


def dump(path: Path) -> dict[str, np.ndarray]:
    """Every dataset's contents (and the attributes that must not change), for equality checks."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as file:
        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = obj.asstr()[...] if obj.dtype.kind == "O" else obj[...]
        file.visititems(visit)
        for key in ("identity", "config", "layers", "complete", "schema_version"):
            out[f"@{key}"] = np.asarray(file.attrs[key])
    return out


@contextmanager
def interrupted_at_append(monkeypatch: pytest.MonkeyPatch, number: int) -> Iterator[None]:
    """Inside the block, ``StudyWriter.append`` raises KeyboardInterrupt on its ``number``-th call
    (the earlier calls write normally), like Ctrl-C mid-run; the block must be interrupted."""
    original, calls = StudyWriter.append, {"n": 0}

    def append(self: StudyWriter, batch: PromptBatch) -> None:
        calls["n"] += 1
        if calls["n"] == number:
            raise KeyboardInterrupt
        original(self, batch)

    import pytest

    monkeypatch.setattr(StudyWriter, "append", append)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(StudyWriter, "append", original)


@contextmanager
def lock_held_elsewhere(path: Path, purpose: str) -> Iterator[None]:
    """Inside the block, another process holds ``path``'s writer lock, named ``purpose`` (what a
    second writer's one-line refusal must name)."""
    import subprocess
    import sys

    script = (f"import time\nfrom store.lock import study_lock\nwith study_lock({str(path)!r}, {purpose!r}):\n"
              "    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()

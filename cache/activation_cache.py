"""The on-disk activation cache SAE training reads: capture once, train many.

One HDF5 file per (model, revision, dtype, layers). Rows are keyed by **segment** (a model
input, identified by a 64-bit hash of its token ids), not by corpus, so:

* tokens accumulate across runs: a larger ``--tokens`` only forwards the segments the file
  lacks (the corpus of a larger budget starts with the smaller one's segments);
* every training whose corpus shares segments with the file reuses their rows (another
  ``--d-sae``, ``--k``, epochs, mixture);
* a killed or time-boxed capture (``max_seconds``) keeps every flushed segment, and a training
  can run on whatever has been captured so far.

Layout (format 2)::

    attrs    key (JSON: format, model, revision, dtype), layers, rows, segments,
             forward_seconds, forward_tokens
    layer_<L>   float16 [rows, d_model]     every real token, segments one after another
    seg_hash    int64 [segments]            hash of the segment's token ids
    seg_start   int64 [segments]            first row of the segment
    seg_len     int32 [segments]            its tokens (= rows)

The committed ``rows`` / ``segments`` counts are written after the data they cover, so a
killed run resumes at the last flush. Speed: the forward stops after the last requested layer,
segments are forwarded in corpus order (held-out ones first) in windows sorted by length (little padding), the
residuals are converted to float16 by torch and written in large chunks (``flush_rows``), and
no Python work is done per token (``bench/bench_sae_capture.py`` compares it with a bare
forward).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from cache.forward import pad_left, pad_token_id
from cache.hooks import capture_resid
from cache.models import LoadedModel
from cache.sae_corpus import Segment

ACTIVATIONS_FORMAT = 2
#: Segments per length-sorted window: batches are cut from one window at a time, so capture
#: follows the corpus order (the held-out prompts first) while padding stays small.
WINDOW_BATCHES = 16


def segment_hash(token_ids: Sequence[int]) -> int:
    """A signed 64-bit hash of a segment's token ids (what its activations depend on)."""
    digest = hashlib.sha256(np.asarray(token_ids, dtype=np.int64).tobytes()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


def cache_key(loaded: LoadedModel) -> str:
    dtype = next(loaded.model.parameters()).dtype
    return json.dumps({"format": ACTIVATIONS_FORMAT, "model": loaded.model_id, "revision": loaded.revision,
                       "dtype": str(dtype)}, sort_keys=True)


def default_cache_path(directory: Path, loaded: LoadedModel, layers: Sequence[int]) -> Path:
    """An existing cache in ``directory`` for this model that holds all of ``layers`` (the one
    with most rows), else a new file named after the model and the layers."""
    key = cache_key(loaded)
    best: tuple[int, Path] | None = None
    for path in sorted(Path(directory).glob("acts-*.h5")) if Path(directory).is_dir() else []:
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("key") != key or not set(layers) <= {int(x) for x in f.attrs.get("layers", [])}:
                    continue
                rows = int(f.attrs.get("rows", 0))
        except OSError:
            continue
        if best is None or rows > best[0]:
            best = (rows, path)
    if best is not None:
        return best[1]
    name = hashlib.sha256(f"{key}|{sorted(set(layers))}".encode()).hexdigest()[:16]
    return Path(directory) / f"acts-{name}.h5"


def _open(path: Path, key: str, layers: Sequence[int], d_model: int) -> tuple[h5py.File, list[int]]:
    """The cache file for writing, created (or rebuilt, when it is of another model or lacks a
    layer) as needed; uncommitted rows of a killed run are cut off. Returns it and its layers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(path, "a")
    stored = [int(x) for x in f.attrs.get("layers", [])]
    if f.attrs.get("key") == key and set(layers) <= set(stored):
        wanted = stored
    else:
        wanted = sorted(set(layers))
        for name in list(f.keys()):
            del f[name]
        for name, value in (("key", key), ("layers", wanted), ("rows", 0), ("segments", 0), ("forward_seconds", 0.0),
                            ("forward_tokens", 0)):
            f.attrs[name] = value
        for layer in wanted:
            # chunks of ~256 KiB: large sequential writes and reads
            f.create_dataset(f"layer_{layer}", (0, d_model), maxshape=(None, d_model), dtype="f2",
                             chunks=(max(1, 131072 // d_model), d_model))
        for name, dtype in (("seg_hash", "i8"), ("seg_start", "i8"), ("seg_len", "i4")):
            f.create_dataset(name, (0,), maxshape=(None,), dtype=dtype, chunks=(8192,))
    rows, segments = int(f.attrs["rows"]), int(f.attrs["segments"])
    for layer in wanted:
        f[f"layer_{layer}"].resize(rows, axis=0)
    for name in ("seg_hash", "seg_start", "seg_len"):
        f[name].resize(segments, axis=0)
    return f, wanted


def _batches(segments: Sequence[Segment], todo: list[int], batch_size: int) -> list[list[int]]:
    out = []
    window = batch_size * WINDOW_BATCHES
    for start in range(0, len(todo), window):
        chunk = sorted(todo[start : start + window], key=lambda i: (len(segments[i].token_ids), i))
        out += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return out


class _Buffer:
    """Captured rows waiting to be written, per layer, with their segments."""

    def __init__(self, layers: Sequence[int]) -> None:
        self.acts: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
        self.hashes: list[int] = []
        self.lengths: list[int] = []
        self.rows = 0

    def flush(self, f: h5py.File, seconds: float) -> None:
        if not self.hashes:
            return
        rows, segments = int(f.attrs["rows"]), int(f.attrs["segments"])
        for layer, parts in self.acts.items():
            ds = f[f"layer_{layer}"]
            ds.resize(rows + self.rows, axis=0)
            ds[rows:] = np.concatenate(parts)
            parts.clear()
        lengths = np.asarray(self.lengths, np.int64)
        starts = np.full(len(lengths), rows, np.int64)
        starts[1:] += np.cumsum(lengths)[:-1]
        for name, values in (("seg_hash", np.asarray(self.hashes, np.int64)), ("seg_start", starts), ("seg_len", lengths)):
            f[name].resize(segments + len(values), axis=0)
            f[name][segments:] = values
        # the committed counts last: a kill before this line leaves the previous commit intact
        f.attrs["forward_seconds"] = float(f.attrs["forward_seconds"]) + seconds
        f.attrs["forward_tokens"] = int(f.attrs["forward_tokens"]) + self.rows
        f.attrs["segments"] = segments + len(self.hashes)
        f.attrs["rows"] = rows + self.rows
        f.flush()
        self.hashes, self.lengths, self.rows = [], [], 0


@torch.no_grad()
def collect_activations(
    loaded: LoadedModel, segments: Sequence[Segment], layers: Sequence[int], path: Path, *, batch_size: int = 8,
    max_seconds: float | None = None, flush_rows: int = 32768, flush_seconds: float = 120.0, progress: bool = True,
) -> dict[str, Any]:
    """Add the residuals at ``layers`` of every segment the cache at ``path`` lacks.

    Forwards stop after the last cached layer; a window's batches run in length order; rows are
    written every ``flush_rows`` rows or ``flush_seconds`` seconds (what a kill can lose). With
    ``max_seconds`` the capture stops at the first flush past that time and the rest is left for
    the next run. Returns counts and speeds.
    """
    model = loaded.model
    d_model = int(model.config.hidden_size)
    f, wanted = _open(Path(path), cache_key(loaded), layers, d_model)
    try:
        present = set(f["seg_hash"][:].tolist())
        hashes = [segment_hash(s.token_ids) for s in segments]
        todo, queued = [], set()
        for i, h in enumerate(hashes):
            if h not in present and h not in queued:  # a segment that repeats is forwarded once
                todo.append(i)
                queued.add(h)
        pad_id = pad_token_id(loaded.tokenizer)
        buffer = _Buffer(wanted)
        started = last_flush = time.perf_counter()
        run_tokens, stopped_early = 0, False
        total = sum(len(segments[i].token_ids) for i in todo)
        with tqdm(total=total, unit="tok", unit_scale=True, desc="activations", disable=not progress or not total) as bar:
            # held-out segments first, in batches of their own: whatever a time-boxed capture
            # gets can be trained on and measured
            held_out = [i for i in todo if segments[i].holdout]
            rest = [i for i in todo if not segments[i].holdout]
            for batch in _batches(segments, held_out, batch_size) + _batches(segments, rest, batch_size):
                ids = [list(segments[i].token_ids) for i in batch]
                inputs = pad_left(ids, pad_id, model.device)
                with capture_resid(model, wanted, stop=True) as captured:
                    model(**inputs, use_cache=False)
                mask = inputs["attention_mask"].bool()  # [batch, width]; left padding keeps each row's tokens in order
                for layer in wanted:
                    buffer.acts[layer].append(captured[layer][0][mask].to(torch.float16).cpu().numpy())
                buffer.hashes += [hashes[i] for i in batch]
                buffer.lengths += [len(x) for x in ids]
                n = int(mask.sum())
                buffer.rows += n
                run_tokens += n
                bar.update(n)
                now = time.perf_counter()
                if buffer.rows >= flush_rows or now - last_flush >= flush_seconds:
                    buffer.flush(f, now - last_flush)
                    last_flush = time.perf_counter()
                    if max_seconds is not None and last_flush - started >= max_seconds:
                        stopped_early = True
                        break
            buffer.flush(f, time.perf_counter() - last_flush)
        seconds = time.perf_counter() - started
        cached = set(f["seg_hash"][:].tolist())
        missing = list({h: i for i, h in enumerate(hashes) if h not in cached}.values())  # distinct segments
        stats = {
            "layers_in_cache": list(wanted), "cache_rows": int(f.attrs["rows"]), "cache_segments": int(f.attrs["segments"]),
            "cache_forward_seconds": round(float(f.attrs["forward_seconds"]), 2),
            "this_run_tokens": run_tokens, "this_run_seconds": round(seconds, 2),
            "this_run_tokens_per_second": round(run_tokens / seconds, 1) if run_tokens and seconds > 0 else None,
            "corpus_segments_missing": len(missing),
            "corpus_tokens_missing": sum(len(segments[i].token_ids) for i in missing),
            "stopped_at_time_budget": stopped_early,
        }
        tokens, seconds_all = int(f.attrs["forward_tokens"]), float(f.attrs["forward_seconds"])
        stats["forward_tokens_per_second"] = round(tokens / seconds_all, 1) if tokens and seconds_all > 0 else None
        stats["forward_tokens"] = sum(len(s.token_ids) for i, s in enumerate(segments) if hashes[i] in cached)
        return stats
    finally:
        f.close()


def read_layer(path: Path, layer: int, segments: Sequence[Segment]) -> dict[str, np.ndarray]:
    """The cached rows of ``segments`` at ``layer``, in the file's order (segments not in the
    cache are left out):
    ``acts`` float16 [rows, d] and per row ``holdout``, ``position``, ``post_instruction``
    (chat template tokens after the instruction), ``instruction`` (the user's tokens), and
    ``segment`` (index into ``segments``)."""
    with h5py.File(path, "r") as f:
        where = {int(h): (int(s), int(n)) for h, s, n in zip(f["seg_hash"][:], f["seg_start"][:], f["seg_len"][:])}
        spans = [(i, *where[h]) for i, h in enumerate(segment_hash(s.token_ids) for s in segments) if h in where]
        spans.sort(key=lambda span: (span[1], span[0]))  # file order: sequential reads (training shuffles anyway)
        ds = f[f"layer_{layer}"]
        starts = np.array([s for _i, s, _n in spans], np.int64)
        lengths = np.array([n for _i, _s, n in spans], np.int64)
        n_rows = int(lengths.sum())
        if n_rows == ds.shape[0] and (not spans or (starts[0] == 0 and np.all(starts[1:] == starts[:-1] + lengths[:-1]))):
            acts = ds[:]  # the whole file, once each: no second copy (it can be GBs)
        elif n_rows * 2 >= ds.shape[0]:  # most of it: one pass, then pick
            everything = ds[:]
            acts = np.concatenate([everything[s : s + n] for s, n in zip(starts, lengths)])
        else:
            acts = np.concatenate([ds[s : s + n] for s, n in zip(starts, lengths)]) if spans else ds[:0]
    segment = np.repeat(np.array([i for i, _s, _n in spans], np.int64), lengths)
    offsets = np.zeros(len(lengths), np.int64)
    offsets[1:] = np.cumsum(lengths)[:-1]
    position = (np.arange(n_rows) - np.repeat(offsets, lengths)).astype(np.int32)
    holdout = np.array([s.holdout for s in segments], bool)[segment]
    n_post = np.array([s.n_post for s in segments], np.int32)[segment]
    length = np.array([len(s.token_ids) for s in segments], np.int32)[segment]
    n_pre = np.array([s.n_pre for s in segments], np.int32)[segment]
    end = length - np.array([s.n_response for s in segments], np.int32)[segment]  # where the prompt ends
    return {"acts": acts, "holdout": holdout, "position": position, "segment": segment,
            "post_instruction": (n_post > 0) & (position >= end - n_post) & (position < end),
            "instruction": (n_post > 0) & (position >= n_pre) & (position < end - n_post),
            "response": position >= end}

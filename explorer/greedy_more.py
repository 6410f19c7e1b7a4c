"""Search more prompts with the greedy stage and add their sets to the study's result: what the
web app's "search now" runs for a prompt that has no minimal set yet.

The searches use the stored greedy run's settings (layer, K, ranking, order, threshold, …), so
the added sets are comparable with the others. The study's writer lock is taken before the
search and held to the save; when another process holds it, ``StudyBusyError`` says who, at
once, instead of waiting. Headless: no UI import.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from explorer.greedy import GreedyConfig, run_greedy
from explorer.live import LiveContext
from explorer.results import CandidateResult, GreedyResult
from store import InputError, Study
from store.lock import study_lock


def stored_config(stored: dict[str, Any], layer: int, prompts: list[int]) -> GreedyConfig:
    """The stored run's settings for a search of exactly ``prompts`` (no joint set, no budget)."""
    names = {field.name for field in dataclasses.fields(GreedyConfig)}
    kept = {name: (tuple(value) if isinstance(value, list) else value) for name, value in stored.items() if name in names}
    kept |= {"layer": layer, "prompts": tuple(prompts), "max_prompts": len(prompts), "joint": False, "time_budget_s": None}
    return GreedyConfig(**kept)


def merge(old: GreedyResult, new: GreedyResult) -> GreedyResult:
    """``old``'s sets with ``new``'s added; a joint set stays last (the viewers read it there)."""
    if (old.layer, old.k, old.order) != (new.layer, new.k, new.order) or not np.isclose(old.threshold, new.threshold):
        raise InputError(f"the new search (layer {new.layer}, K {new.k}, {new.order}, threshold {new.threshold:+.2f}) does not "
                         f"match the stored one (layer {old.layer}, K {old.k}, {old.order}, threshold {old.threshold:+.2f})")
    joint = len(old.joint_prompts) > 0
    singles = len(old.prompt) - (1 if joint else 0)

    def per_set(name: str) -> np.ndarray:
        a, b = getattr(old, name), getattr(new, name)
        return np.concatenate([a[:singles], b, a[singles:]])

    def ragged(values: str, offsets: str) -> tuple[np.ndarray, np.ndarray]:
        a_values, a_offsets = getattr(old, values), getattr(old, offsets)
        b_values, b_offsets = getattr(new, values), getattr(new, offsets)
        pieces = ([a_values[a_offsets[s] : a_offsets[s + 1]] for s in range(singles)]
                  + [b_values[b_offsets[s] : b_offsets[s + 1]] for s in range(len(b_offsets) - 1)]
                  + [a_values[a_offsets[s] : a_offsets[s + 1]] for s in range(singles, len(a_offsets) - 1)])
        lengths = [len(p) for p in pieces]
        merged = np.concatenate(pieces) if pieces else a_values[:0]
        return merged.astype(a_values.dtype), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    set_latents, set_offsets = ragged("set_latents", "set_offsets")
    sizes, trajectory_offsets = ragged("trajectory_size", "trajectory_offsets")
    scores, _ = ragged("trajectory_score", "trajectory_offsets")
    removed, _ = ragged("trajectory_removed", "trajectory_offsets")
    return dataclasses.replace(
        old, prompt=per_set("prompt"), set_offsets=set_offsets, set_latents=set_latents,
        baseline_score=per_set("baseline_score"), start_score=per_set("start_score"), final_score=per_set("final_score"),
        flipped=per_set("flipped"), baseline_generation=per_set("baseline_generation"),
        ablated_generation=per_set("ablated_generation"), trajectory_offsets=trajectory_offsets,
        trajectory_size=sizes, trajectory_score=scores, trajectory_removed=removed,
    )


def search_into_study(path: Path, run: str, live: LiveContext, prompts: list[int], *, progress: bool = False) -> dict[str, Any]:
    """Search ``prompts`` (not yet searched) and save their sets into the study's greedy result.
    Returns the search's summary plus ``sets``: per prompt, its set (or None: no flip within K)
    and its score. ``StudyBusyError`` at once when another writer holds the study."""
    path = Path(path)
    with study_lock(path, f"web app: greedy search of prompt {', '.join(map(str, prompts))}"):
        with Study(path) as study:
            candidates = CandidateResult.load(study, run)
            if candidates is None:
                raise InputError(f"no candidates in run {run!r}: run `refusal-explorer analyze candidates` first")
            old = GreedyResult.load(study, run)
            stored = GreedyResult.config_of(study, run) if old is not None else {}
            layer = old.layer if old is not None else candidates.layer
            if old is not None:
                searched = set(old.prompt[old.per_prompt()].tolist())
                again = [p for p in prompts if p in searched]
                if again:
                    raise InputError(f"prompt {again[0]} was already searched (set list of run {run!r})")
            config = stored_config(stored, layer, prompts)
            new, summary = run_greedy(study, live, candidates, config, progress=progress)
        merged = new if old is None else merge(old, new)
        merged.save(path, run, config=stored if old is not None else dataclasses.asdict(config))  # the run's settings stay
    flips = new.flips()
    summary["sets"] = [{"prompt": int(new.prompt[s]), "latents": new.latents_of(s).tolist() if flips[s] else None,
                        "score": float(new.final_score[s] if flips[s] else new.start_score[s]),
                        "confirmed": int(new.flipped[s])} for s in range(len(new.prompt))]
    summary["k"] = int(new.k)
    return summary

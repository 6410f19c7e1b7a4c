"""The greedy search itself (explorer/greedy.py runs it per prompt): backward elimination written
as a generator that asks for scores of latent sets, so one search can be driven alone
(``search``) or many side by side, their requests scored in shared batched forwards
(``search_many``: the searches of several prompts fill each forward from layer L).

A search yields ``list of sets`` (to be scored on its prompts) and receives the scores
``[len(sets), P]``; it returns its ``SearchTrace``. Driving it alone or with others gives the
same trace: each search sees only its own scores.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from explorer.evaluate import AblationEvaluator

Order = Literal["ascending", "thresholded"]
Steps = Generator[list[list[int]], np.ndarray, "SearchTrace"]


@dataclass
class SearchTrace:
    """One search: the start set, the final set and every step in between."""

    prompts: list[int]  # evaluator prompt indices the flip must hold on
    start: list[int]
    final: list[int]
    baseline: float  # mean score, nothing ablated
    start_score: float
    final_score: float
    start_flips: bool
    sizes: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    prefix_removed: int = 0  # latents dropped by the prefix pass (ascending order)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def search_steps(
    baseline: np.ndarray, prompts: Sequence[int], start: Sequence[int], *, threshold: float, order: Order,
    p_threshold: float = 0.01, prefix_pass: bool = True,
) -> Steps:
    """Backward elimination from ``start`` on evaluator prompts ``prompts`` (flip on all);
    ``baseline`` is the evaluator's unablated score per prompt.

    ``prefix_pass`` (ascending order): first rank the start set by the effect of each single
    removal (one request), then score every prefix of that ranking removed together (one more)
    and drop the longest prefix whose every step keeps the flip: the one-pass "remove in
    ascending order of individual effect" search in two requests. The step-by-step elimination
    then continues from there, so the final set is still 1-minimal.
    """
    prompts = [int(p) for p in prompts]
    current = [int(i) for i in start]
    now = (yield [current])[0]  # [P]
    trace = SearchTrace(
        prompts=prompts, start=list(current), final=list(current), baseline=float(np.asarray(baseline)[prompts].mean()),
        start_score=float(now.mean()), final_score=float(now.mean()), start_flips=bool((now < threshold).all()),
    )
    trace.sizes.append(len(current))
    trace.scores.append(float(now.mean()))
    trace.removed.append(-1)
    if not trace.start_flips:
        return trace
    if order == "ascending" and prefix_pass and len(current) > 1:
        single = yield [[j for j in current if j != i] for i in current]  # [|S|, P]
        ordered = [current[i] for i in np.argsort(single.mean(axis=1), kind="stable")]
        prefixes = yield [ordered[m:] for m in range(1, len(ordered))]  # [|S|-1, P]
        flips = (prefixes < threshold).all(axis=1)
        keep_going = int(np.argmin(flips)) if not flips.all() else len(flips)  # leading run of flips
        for m in range(keep_going):
            trace.removed.append(ordered[m])
            trace.sizes.append(len(ordered) - m - 1)
            trace.scores.append(float(prefixes[m].mean()))
        trace.prefix_removed = keep_going
        if keep_going:
            kept = set(ordered[keep_going:])
            current, now = [i for i in current if i in kept], prefixes[keep_going - 1]
    while current:
        trial = yield [[j for j in current if j != i] for i in current]  # [|S|, P]
        ok = (trial < threshold).all(axis=1)
        if order == "thresholded":
            change = np.abs(_sigmoid(trial) - _sigmoid(now)[None]).mean(axis=1)
            ok &= change <= p_threshold
        if not ok.any():
            break
        pick = int(np.where(ok, trial.mean(axis=1), np.inf).argmin())
        trace.removed.append(current.pop(pick))
        now = trial[pick]
        trace.sizes.append(len(current))
        trace.scores.append(float(now.mean()))
    trace.final, trace.final_score = list(current), float(now.mean())
    return trace


def search(
    ev: AblationEvaluator, prompts: Sequence[int], start: Sequence[int], *, threshold: float, order: Order, p_threshold: float = 0.01,
    prefix_pass: bool = True,
) -> SearchTrace:
    """One search, each request scored in its own batched call."""
    steps = search_steps(ev.baseline, prompts, start, threshold=threshold, order=order, p_threshold=p_threshold,
                         prefix_pass=prefix_pass)
    prompts = [int(p) for p in prompts]
    try:
        request = next(steps)
        while True:
            request = steps.send(ev.scores_of_sets(request, prompts))
    except StopIteration as done:
        return done.value


def search_many(
    ev: AblationEvaluator, searches: Sequence[tuple[Sequence[int], Sequence[int]]], *, threshold: float, order: Order,
    p_threshold: float = 0.01, prefix_pass: bool = True, side_by_side: int = 8, may_start: Callable[[int], bool] = lambda n: True,
    on_done: Callable[[], None] = lambda: None,
) -> list[SearchTrace]:
    """Run ``searches`` ((prompts, start set) each) ``side_by_side`` at a time: each round, every
    running search's request is scored in one call of shared batched forwards. A search starts
    only while ``may_start(searches started so far)`` (the time budget); searches start in order,
    so the traces returned are those of a prefix of ``searches``, in order."""
    running: dict[int, tuple[Steps, list[int], list[list[int]]]] = {}  # index -> (steps, prompts, its request)
    traces: dict[int, SearchTrace] = {}
    started = 0
    while started < len(searches) or running:
        while started < len(searches) and len(running) < side_by_side and may_start(started):
            prompts, start = searches[started]
            steps = search_steps(ev.baseline, prompts, start, threshold=threshold, order=order, p_threshold=p_threshold,
                                 prefix_pass=prefix_pass)
            running[started] = (steps, [int(p) for p in prompts], next(steps))
            started += 1
        if not running:
            break  # may_start said no: nothing more will start
        pairs = [(s, p) for steps, prompts, request in running.values() for s in request for p in prompts]
        scores = ev.scores_of_pairs([s for s, _ in pairs], [p for _, p in pairs])
        offset = 0
        for index in list(running):
            steps, prompts, request = running[index]
            mine = scores[offset : offset + len(request) * len(prompts)].reshape(len(request), len(prompts))
            offset += len(request) * len(prompts)
            try:
                running[index] = (steps, prompts, steps.send(mine))
            except StopIteration as done:
                traces[index] = done.value
                del running[index]
                on_done()
    return [traces[i] for i in sorted(traces)]

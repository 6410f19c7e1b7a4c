"""Verify an FM pair by intervention: ablate none, i, j and both on the same prompts.

The measured interaction of latents i and j on prompt p is the second difference of the
refusal score f (log-odds, the fast score) over the four ablations::

    f_p(ij) − f_p(i) − f_p(j) + f_p(∅)

It is what the FM's ⟨v_i, v_j⟩ claims (in the FM, ablating both changes the score by
w_i + w_j + ⟨v_i, v_j⟩, ablating each alone by w_i or w_j). Negative: the two back each other
up (ablating both lowers refusal more than the sum: redundancy); positive: the opposite.
Evaluated with ``AblationEvaluator`` from the experiments' layer, on the experiments' prompts,
with nothing else ablated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import LiveContext, prompt_token_ids
from explorer.results import ExperimentResult
from store import Study


def pair_interactions(ev: AblationEvaluator, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Measured interaction per pair and prompt, float64 [len(pairs), P]."""
    if not pairs:
        return np.zeros((0, ev.n_prompts))
    sets: list[list[int]] = [[]]
    for i, j in pairs:
        sets.extend([[int(i)], [int(j)], [int(i), int(j)]])
    scores = ev.scores_of_sets(sets).astype(np.float64)  # [1 + 3·pairs, P]
    none, rest = scores[0], scores[1:].reshape(len(pairs), 3, -1)
    return rest[:, 2] - rest[:, 0] - rest[:, 1] + none[None, :]


def experiment_pair_measure(
    study: Study, live: Callable[[], LiveContext], experiments: ExperimentResult, *, max_batch: int = 32,
) -> Callable[[Sequence[tuple[int, int]]], tuple[np.ndarray, np.ndarray]]:
    """A ``measure`` for :func:`explorer.interactions.run_fm`: pairs → (values [pairs, P], prompts).

    ``live`` is called only when pairs are measured, so an "additive" verdict loads no model."""
    prompts = [int(p) for p in experiments.prompts]

    def measure(pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        ev = AblationEvaluator.from_live(
            live(), prompt_token_ids(study, prompts), EvaluatorConfig(layer=int(experiments.layer), max_batch=max_batch),
        )
        return pair_interactions(ev, pairs), np.asarray(prompts, np.int64)

    return measure

"""The model's own refusal opening tokens, found from its cached generations.

The fast refusal score is the log-odds that the response starts with a refusal token. A fixed
"I" misses models whose refusals open otherwise: Qwen2.5 often answers "\\n\\nI'm sorry", whose
first token is "\\n\\n". Here every cached generation is tokenised, its first token taken
(leading whitespace and newline tokens included, as the model emitted them), and a token
joins the set when at least ``min_share`` of the generations it opens are refusals by the
phrase detector and it opens at least ``min_count`` refusals. Tokens that open refusals and
answers alike (say "\\n\\n" opening both) are left out and reported, because they would make
every answer look like a refusal.

The set is stored under ``/analysis/<run>/refusal-tokens``; ``explorer.live.open_live``
scores with the stored set of the ``default`` run unless the study was cached with explicit
``--refusal-tokens``, which always win.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cache.generation import RefusalDetector
from explorer.results import StageResult
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class RefusalTokensConfig:
    min_share: float = 0.8
    """A token joins the set when at least this share of the cached generations it opens are refusals."""
    min_count: int = 2
    """… and it opens at least this many refusals."""
    batch_size: int = 8
    """Prompts per forward when re-scoring."""

    def __post_init__(self) -> None:
        if not 0 < self.min_share <= 1 or self.min_count < 1 or self.batch_size < 1:
            raise InputError("--min-share must be in (0, 1], --min-count and --batch-size ≥ 1")


@dataclass(frozen=True, kw_only=True)
class RefusalTokensResult(StageResult):
    STAGE: ClassVar[str] = "refusal-tokens"
    COMMAND: ClassVar[str] = "refusal-explorer analyze refusal-tokens"
    token_id: np.ndarray  # int [k]: the chosen opening tokens
    token: np.ndarray  # str [k]: how each reads
    n_refused: np.ndarray  # int [k]: refused generations it opens
    n_answered: np.ndarray  # int [k]: complying generations it opens
    rejected_id: np.ndarray  # int [m]: tokens that open refusals but too many answers as well
    rejected_n_refused: np.ndarray  # int [m]
    rejected_n_answered: np.ndarray  # int [m]
    min_share: float
    min_count: int


def first_token(tokenizer: Any, generation: str) -> int | None:
    ids = tokenizer(generation, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if ids else None


def find_refusal_tokens(
    tokenizer: Any, generations: Sequence[str], detector: RefusalDetector | None = None, *, min_share: float = 0.8, min_count: int = 2,
) -> RefusalTokensResult:
    """Opening tokens of refusals, from (generation text) samples; see the module docstring."""
    detector = detector or RefusalDetector()
    refused, answered = Counter(), Counter()
    for text in generations:
        if not text.strip():
            continue
        token = first_token(tokenizer, text)
        if token is None:
            continue
        (refused if detector.is_refusal(text) else answered)[token] += 1
    chosen, rejected = [], []
    for token, n in refused.most_common():
        share = n / (n + answered[token])
        (chosen if share >= min_share and n >= min_count else rejected).append(token)
    decode = lambda t: tokenizer.decode([t])  # noqa: E731
    return RefusalTokensResult(
        token_id=np.array(chosen, np.int64), token=np.array([decode(t) for t in chosen], dtype=object),
        n_refused=np.array([refused[t] for t in chosen], np.int64), n_answered=np.array([answered[t] for t in chosen], np.int64),
        rejected_id=np.array(rejected, np.int64), rejected_n_refused=np.array([refused[t] for t in rejected], np.int64),
        rejected_n_answered=np.array([answered[t] for t in rejected], np.int64), min_share=float(min_share), min_count=int(min_count),
    )


def disagreements(scores: np.ndarray, threshold: float, refused_by_generation: np.ndarray) -> int:
    """Prompts whose fast score (> threshold = refused) and generation verdict (1/0; -1 = not
    generated, skipped) disagree."""
    generated = refused_by_generation >= 0
    fast = scores > threshold
    return int((fast[generated] != (refused_by_generation[generated] == 1)).sum())


def run_refusal_tokens(study: Any, live: Any, config: RefusalTokensConfig) -> tuple[RefusalTokensResult, dict[str, Any]]:
    """Find the set from the study's cached generations, then re-score every generated prompt
    with the old token set and the new one and count fast-score/generation disagreements."""
    from cache.forward import refusal_log_odds
    from explorer.direction import last_logits
    from explorer.live import prompt_token_ids

    generations = study.column("generation")
    refused = study.column("refused").astype(np.int64)
    generated = np.flatnonzero(refused >= 0)
    if len(generated) == 0:
        raise InputError("the study has no cached generations; cache it with --generate N (e.g. 24) first")
    tokenizer = live.loaded.tokenizer
    result = find_refusal_tokens(
        tokenizer, [str(generations[i]) for i in generated], live.detector, min_share=config.min_share, min_count=config.min_count,
    )
    # the family's default, not a previously stored set: "before" is always the fixed token
    old_ids = live.loaded.adapter.refusal_token_ids(tokenizer, None)
    logits = last_logits(live, prompt_token_ids(study, generated.tolist()), config.batch_size)
    old = refusal_log_odds(logits, old_ids).numpy()
    new = refusal_log_odds(logits, result.token_id.tolist()).numpy() if len(result.token_id) else old
    threshold = live.refusal_threshold
    summary = {
        "tokens": [(str(t), int(r), int(a)) for t, r, a in zip(result.token, result.n_refused, result.n_answered)],
        "rejected": [(tokenizer.decode([int(t)]), int(r), int(a)) for t, r, a in zip(result.rejected_id, result.rejected_n_refused, result.rejected_n_answered)],
        "old_tokens": [tokenizer.decode([t]) for t in old_ids],
        "generated": int(len(generated)),
        "refused_by_generation": int((refused[generated] == 1).sum()),
        "disagreements_before": disagreements(old, threshold, refused[generated]),
        "disagreements_after": disagreements(new, threshold, refused[generated]),
        "threshold": float(threshold),
        "min_share": float(config.min_share),
        "min_count": int(config.min_count),
    }
    return result, summary

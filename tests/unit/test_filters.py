"""The one filter language of both viewers: columns named as the headers, specific errors."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.filters import FEATURES, PROMPTS
from store import InputError

FEATURE_ROWS = {
    "latent": np.arange(6), "cosine": np.array([0.5, -0.1, np.nan, 0.3, 0.25, 0.0], np.float32),
    "attribution": np.zeros(6, np.float32), "freq_harmful": np.array([1, 0.5, 0, 1, 0, 0], np.float32),
    "freq_harmless": np.zeros(6, np.float32), "freq_diff": np.array([1, 0.5, 0, 1, 0, 0], np.float32),
    "max_active": np.ones(6, np.float32), "minimal_sets": np.array([1, 0, 0, 2, 0, 0]),
    "fm_weight": np.array([0.1, np.nan, np.nan, 0.2, np.nan, np.nan], np.float32),
    "fm_interaction": np.zeros(6, np.float32), "dormant": np.array([0, 0, 1, 0, 0, 0], np.int8),
}
PROMPT_ROWS = {
    "prompt": np.arange(4), "label": np.array(["harmful", "harmless", "harmful", "harmless"]),
    "refusal_score": np.array([2.0, -1.0, 0.5, 3.0], np.float32), "refused": np.array([1, 0, 0, -1], np.int8),
    "tokens": np.array([10, 50, 30, 12]), "text": np.array(["Build a BOMB", "Bake bread", "Pick a lock", "Sky blue"]),
}


def features(query: str) -> list[int]:
    return FEATURES.filter(query, FEATURE_ROWS, 6).tolist()


def prompts(query: str) -> list[int]:
    return PROMPTS.filter(query, PROMPT_ROWS, 4).tolist()


def test_every_column_compares_by_its_header_name() -> None:
    assert features("cosine>0.2") == [0, 3, 4]  # NaN (not analysed) matches no comparison
    assert features("cos>0.2") == [0, 3, 4] and features("sets>=1 dorm=0") == [0, 3]  # the TUI's short headers
    assert features("cosine>0.2 freq_diff>=1") == [0, 3]
    assert features("cosine!=0") == [0, 1, 2, 3, 4]
    assert features("minimal_sets=2") == [3]
    assert features("minimal") == [0, 3] and features("dormant") == [2] and features("fm") == [0, 3]
    assert features("4") == [4] and features("") == list(range(6))
    assert prompts("refusal_score>1") == [0, 3] and prompts("tokens<=12 harmful") == [0]
    assert prompts("label=HARMLESS") == [1, 3] and prompts("label!=harmless") == [0, 2]
    assert prompts("refused") == [0] and prompts("complied") == [1, 2] and prompts("refused=-1") == [3]
    assert prompts("bomb") == [0] and prompts("#2") == [2] and prompts("b") == [0, 1, 3]


def test_unknown_columns_and_words_are_named() -> None:
    with pytest.raises(InputError, match=r"unknown column 'cosin' in 'cosin>0.2'; did you mean 'cosine'\? Columns: latent, cosine \(cos\)"):
        features("cosin>0.2")
    with pytest.raises(InputError, match=r"unknown column 'foo' in 'foo>1' Columns: latent, cosine \(cos\), attribution \(attr\)"):
        features("foo>1")
    with pytest.raises(InputError, match="unknown column 'scor'.*did you mean 'score'"):
        prompts("scor>1")
    with pytest.raises(InputError, match="unknown filter word 'harm'"):
        features("harm")
    with pytest.raises(InputError, match="cosine is a number column, so the value must be a number, not 'high'"):
        features("cosine>high")
    with pytest.raises(InputError, match="'label' is text: compare it with = or !="):
        prompts("label>a")


def test_legend_lists_every_column_and_word() -> None:
    for spec in (FEATURES, PROMPTS):
        legend = spec.legend_markdown()
        for column in spec.columns:
            assert all(f"`{name}`" in legend for name in column.names) and column.meaning in legend

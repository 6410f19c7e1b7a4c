"""The latent dashboard (explorer/latent_dashboard.py) on a synthetic study with planted latents:
one that fires only on harmless prompts (once each, at 1 + prompt/n), the refusal latents that
fire on harmful prompts' last tokens, and dormant latents that never fire."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from explorer.browse import StudyBrowser
from explorer.latent_dashboard import dashboard, firing, search
from store import Study
from tests.synthetic import SyntheticConfig, make_synthetic_study

HARMLESS_ONLY = 5
CONFIG = SyntheticConfig(n_prompts=40, d_sae=320, harmless_latents=(HARMLESS_ONLY,), seed=11)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudyBrowser]:
    path = make_synthetic_study(tmp_path_factory.mktemp("dashboard") / "s.h5", CONFIG)
    with Study(path) as study:
        yield StudyBrowser(study)


def test_a_harmless_only_latent_fills_the_harmless_column_strongest_first(browser: StudyBrowser) -> None:
    board = dashboard(browser, 6, HARMLESS_ONLY)
    harmless = [p for p in range(CONFIG.n_prompts) if p % 2 == 1]  # the synthetic study alternates harmful, harmless
    assert board.n_prompts == len(harmless)
    assert board.top_by_label["harmful"] == []
    shown = [e.prompt for e in board.top_by_label["harmless"]]
    assert shown == sorted(harmless, reverse=True)[: len(shown)] and len(shown) == 5  # peak 1 + p/n: the last prompts lead
    first = board.top_by_label["harmless"][0]
    assert first.peak_value == pytest.approx(1 + shown[0] / CONFIG.n_prompts, abs=1e-2)  # float16 codes
    assert first.peak_position == 3 and first.activations[3] == first.peak_value  # the first instruction token
    assert np.count_nonzero(first.activations) == 1
    assert board.counts_by_label["harmful"].sum() == 0 and board.counts_by_label["harmless"].sum() == len(harmless)


def test_quantile_buckets_are_ordered_and_do_not_overlap(browser: StudyBrowser) -> None:
    board = dashboard(browser, 6, HARMLESS_ONLY)
    buckets = board.buckets
    assert len(buckets) == 4 and buckets[0].first == 0 and buckets[-1].stop == board.n_prompts
    for upper, lower in zip(buckets, buckets[1:]):
        assert upper.stop == lower.first and upper.low > lower.high  # distinct peaks: strictly apart
    for bucket in buckets:
        peaks = [e.peak_value for e in bucket.examples]
        assert peaks == sorted(peaks, reverse=True) and bucket.high >= peaks[0] and peaks[-1] >= bucket.low
        assert len(bucket.examples) == min(3, bucket.stop - bucket.first)
    everyone = [e.prompt for b in buckets for e in b.examples]
    assert len(everyone) == len(set(everyone))  # no prompt shown in two buckets
    assert buckets[-1].examples[-1].prompt == 1  # the weakest firing prompt is shown too


def test_refusal_latent_leads_with_harmful_prompts_and_histogram_splits_by_label(browser: StudyBrowser) -> None:
    board = dashboard(browser, 6, 3)
    assert all(e.label == "harmful" for e in board.top_by_label["harmful"])
    assert all(e.label == "harmless" for e in board.top_by_label["harmless"])
    assert board.top_by_label["harmful"][0].peak_value > 4 > board.top_by_label["harmless"][0].peak_value  # planted 4–5
    fired = firing(browser, 6, 3)
    assert sum(c.sum() for c in board.counts_by_label.values()) == len(fired.values)
    strong = board.edges[:-1] >= 4.0
    assert board.counts_by_label["harmful"][strong].sum() >= 3 * CONFIG.n_prompts // 2  # 3 planted tokens per harmful prompt
    assert board.counts_by_label["harmless"][strong].sum() < board.counts_by_label["harmful"][strong].sum() / 10


def test_logit_lens_has_values_and_a_dormant_latent_has_nothing(browser: StudyBrowser) -> None:
    board = dashboard(browser, 6, 42)
    top = [v for _, v in board.lens_top]
    bottom = [v for _, v in board.lens_bottom]
    assert top[0] == pytest.approx(1.42) and top == sorted(top, reverse=True) and bottom[0] == pytest.approx(-1.42)
    assert [t for t, _ in board.lens_top] == browser.study.token_strings(browser.stats(6)["logit_lens_top"][42])
    silent = dashboard(browser, 6, CONFIG.dormant_latents[0])
    assert silent.n_prompts == 0 and silent.buckets == [] and not any(silent.top_by_label.values())
    assert all(c.sum() == 0 for c in silent.counts_by_label.values())


def test_text_search_finds_only_firing_prompts_containing_the_text(browser: StudyBrowser) -> None:
    texts = browser.study.column("text")
    word = texts[1].split()[0]
    found, total = search(browser, 6, HARMLESS_ONLY, word.upper())
    expected = [p for p in range(1, CONFIG.n_prompts, 2) if word in texts[p]]
    assert total == len(expected) and sorted(e.prompt for e in found) == expected
    assert [e.peak_value for e in found] == sorted((e.peak_value for e in found), reverse=True)
    assert search(browser, 6, HARMLESS_ONLY, "no such words here") == ([], 0)
    everything, total = search(browser, 6, HARMLESS_ONLY, "", limit=3)
    assert total == CONFIG.n_prompts // 2 and len(everything) == 3

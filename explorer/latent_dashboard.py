"""A latent's dashboard, closer to Neuronpedia's: examples across activation quantiles, the top
examples of each label side by side, the activation histogram split by label, the logit lens
with its values, and a text search over the prompts where the latent fires.

Headless and computed from the study only (the latent's CSC slice, the prompt labels and texts,
the SAE arrays the cache stored), so the TUI and the web app show the same numbers. Everything
comes from one read of the latent's slice; the per-prompt peaks are computed once per latent and
kept by the ``StudyBrowser`` cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from explorer.browse import ActivationExample, StudyBrowser

QUANTILES = 4
"""Activation quantile buckets (equal numbers of prompts, by the prompt's peak activation)."""
PER_BUCKET = 3
"""Examples shown per bucket, spread evenly over the bucket's ranks."""
PER_LABEL = 5
"""Top examples shown per label."""
BINS = 20


@dataclass(frozen=True)
class Firing:
    """Where a latent fires, per prompt: the prompts (ascending), their peak and its position."""

    rows: np.ndarray  # int64 [m]: token rows of the latent's non-zero activations (ascending)
    values: np.ndarray  # float32 [m]
    prompt_of_row: np.ndarray  # int64 [m]
    prompts: np.ndarray  # int64 [p]: prompts where it fires at least once
    peak: np.ndarray  # float32 [p]
    peak_position: np.ndarray  # int64 [p]: token position of the peak within its prompt


@dataclass(frozen=True)
class QuantileBucket:
    """Prompts ranked ``first``..``stop - 1`` by peak activation (0 = strongest)."""

    first: int
    stop: int
    high: float  # the bucket's strongest peak
    low: float  # its weakest
    examples: list[ActivationExample]


@dataclass(frozen=True)
class LatentDashboard:
    layer: int
    latent: int
    n_prompts: int  # prompts where it fires
    buckets: list[QuantileBucket]  # strongest first; rank ranges do not overlap
    top_by_label: dict[str, list[ActivationExample]]  # label → its strongest prompts
    edges: np.ndarray  # float [BINS + 1]: histogram bins shared by every label
    counts_by_label: dict[str, np.ndarray]  # label → token counts per bin
    lens_top: list[tuple[str, float]]  # (token, logit per unit activation; NaN when not stored)
    lens_bottom: list[tuple[str, float]]


def firing(browser: StudyBrowser, layer: int, latent: int) -> Firing:
    """The latent's activations grouped by prompt (cached per latent)."""

    def compute() -> Firing:
        rows, values = browser.codes(layer).latent_entries(latent)
        rows = rows.astype(np.int64)
        offsets = browser.study.token_offsets
        prompt_of_row = np.searchsorted(offsets, rows, side="right") - 1
        if not len(rows):
            empty = np.zeros(0, np.int64)
            return Firing(rows, values, prompt_of_row, empty, np.zeros(0, np.float32), empty)
        starts = np.flatnonzero(np.r_[True, prompt_of_row[1:] != prompt_of_row[:-1]])  # rows ascend, so prompts do
        # sorted by prompt, strongest first within it (stable: the first token reaching the peak)
        best = np.lexsort((-values, prompt_of_row))[starts]
        prompts = prompt_of_row[starts]
        return Firing(rows, values, prompt_of_row, prompts, values[best].astype(np.float32), rows[best] - offsets[prompts])

    return browser.cached(("firing", layer, latent), compute)


def example(browser: StudyBrowser, fired: Firing, index: int) -> ActivationExample:
    """The ``index``-th firing prompt with the latent's activation on each of its tokens."""
    study = browser.study
    prompt = int(fired.prompts[index])
    start, stop = int(study.token_offsets[prompt]), int(study.token_offsets[prompt + 1])
    activations = np.zeros(stop - start, np.float32)
    low, high = np.searchsorted(fired.rows, [start, stop])
    activations[fired.rows[low:high] - start] = fired.values[low:high]
    tokens = study.token_strings(study.token_ids(prompt))
    return ActivationExample(prompt, str(study.labels[prompt]), tokens, activations, int(fired.peak_position[index]),
                             float(fired.peak[index]))


def _ranked(fired: Firing) -> np.ndarray:
    """Indices into ``fired.prompts``, strongest peak first (ties: lower prompt first)."""
    return np.lexsort((fired.prompts, -fired.peak))


def quantile_buckets(browser: StudyBrowser, fired: Firing, n: int = QUANTILES, per: int = PER_BUCKET) -> list[QuantileBucket]:
    """The firing prompts ranked by peak and cut into ``n`` buckets of (nearly) equal size; a few
    examples from each, spread over its ranks, so the weak end of the latent is seen too."""
    order = _ranked(fired)
    bounds = np.unique(np.linspace(0, len(order), n + 1).round().astype(int))
    buckets = []
    for first, stop in zip(bounds[:-1], bounds[1:]):
        picks = np.unique(np.linspace(first, stop - 1, min(per, stop - first)).round().astype(int))
        buckets.append(QuantileBucket(int(first), int(stop), float(fired.peak[order[first]]), float(fired.peak[order[stop - 1]]),
                                      [example(browser, fired, int(order[r])) for r in picks]))
    return buckets


def top_by_label(browser: StudyBrowser, fired: Firing, per: int = PER_LABEL) -> dict[str, list[ActivationExample]]:
    """For each label of the study (harmful, harmless, …), its prompts where the latent peaks highest."""
    labels = browser.study.labels
    order = _ranked(fired)
    fired_labels = labels[fired.prompts[order]] if len(order) else np.zeros(0, labels.dtype)
    return {str(label): [example(browser, fired, int(i)) for i in order[fired_labels == label][:per]]
            for label in sorted(set(labels.tolist()))}


def histogram_by_label(browser: StudyBrowser, fired: Firing, bins: int = BINS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Token-level activation counts per label, on bins shared by every label."""
    labels = browser.study.labels
    edges = np.histogram_bin_edges(fired.values, bins=bins) if len(fired.values) else np.zeros(0)
    token_labels = labels[fired.prompt_of_row] if len(fired.values) else np.zeros(0, labels.dtype)
    return edges, {str(label): (np.histogram(fired.values[token_labels == label], bins=edges)[0] if len(edges)
                                else np.zeros(0, np.int64)) for label in sorted(set(labels.tolist()))}


def logit_lens(browser: StudyBrowser, layer: int, latent: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(token, value) pairs the decoder row promotes and suppresses; values NaN on studies cached
    before the values were stored."""
    stats, study = browser.stats(layer), browser.study

    def side(name: str) -> list[tuple[str, float]]:
        if f"logit_lens_{name}" not in stats:
            return []
        tokens = study.token_strings(stats[f"logit_lens_{name}"][latent])
        values = stats.get(f"logit_lens_{name}_value")
        numbers = values[latent].tolist() if values is not None else [float("nan")] * len(tokens)
        return list(zip(tokens, map(float, numbers)))

    return side("top"), side("bottom")


def dashboard(browser: StudyBrowser, layer: int, latent: int) -> LatentDashboard:
    """Everything the dashboard shows for one latent (InputError-free: the caller checks the id)."""

    def compute() -> LatentDashboard:
        fired = firing(browser, layer, latent)
        edges, counts = histogram_by_label(browser, fired)
        top, bottom = logit_lens(browser, layer, latent)
        return LatentDashboard(layer, latent, len(fired.prompts), quantile_buckets(browser, fired), top_by_label(browser, fired),
                               edges, counts, top, bottom)

    return browser.cached(("dashboard", layer, latent), compute)


def search(browser: StudyBrowser, layer: int, latent: int, query: str, limit: int = 20) -> tuple[list[ActivationExample], int]:
    """Prompts where the latent fires whose text contains ``query`` (case-insensitive), strongest
    first: (the first ``limit``, how many match in all)."""
    fired = firing(browser, layer, latent)
    texts = browser.cached("prompt_texts", lambda: np.char.lower(browser.study.column("text").astype(str)))
    needle = query.strip().lower()
    order = _ranked(fired)
    if needle:
        order = order[np.char.find(texts[fired.prompts[order]], needle) >= 0] if len(order) else order
    return [example(browser, fired, int(i)) for i in order[:limit]], len(order)

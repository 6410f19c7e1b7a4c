"""What the viewers show, computed without any UI library.

The TUI and the web app both render these plain objects, so a view's data logic is written and
tested once. Everything reads the study file only (no model), and the per-interaction calls
(``feature_detail``, ``prompt_view``) touch only the rows they need, so they stay fast on studies
with millions of tokens and 100k+ latents.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import numpy as np

from explorer import filters
from explorer.results_paper2 import PAPER2_RESULT_TYPES
from explorer.results import RESULT_TYPES, CandidateResult, DormantResult, FMResult, GreedyResult, StageResult
from store import LayerCodes, Study

T = TypeVar("T")
R = TypeVar("R", bound=StageResult)

FEATURE_COLUMNS = filters.FEATURES.names
PROMPT_COLUMNS = filters.PROMPTS.names


@dataclass(frozen=True)
class Table:
    """Columns of equal length (NaN where not analysed), filtered in the one filter language
    (``explorer.filters``) under the same names the viewers put in their headers."""

    columns: dict[str, np.ndarray]
    spec: ClassVar[filters.TableSpec]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def order(self, column: str, *, descending: bool = True, rows: np.ndarray | None = None) -> np.ndarray:
        """Row indices sorted by a column (NaN last), optionally within a subset of rows."""
        filters.check_sort(self.spec, column)
        rows = np.arange(len(self)) if rows is None else rows
        values = self.columns[column][rows]
        if values.dtype.kind in "USO":
            key = np.argsort(values.astype(str), kind="stable")
            return rows[key[::-1]] if descending else rows[key]
        values = values.astype(np.float64)
        key = np.where(np.isnan(values), np.inf, -values if descending else values)
        return rows[np.argsort(key, kind="stable")]

    def filter(self, query: str) -> np.ndarray:
        """Rows matching every term of the query (see ``explorer.filters``); InputError naming
        an unknown column or word."""
        return self.spec.filter(query, self.columns, len(self))


@dataclass(frozen=True)
class FeatureTable(Table):
    """One row per latent of a layer; columns are arrays of length d_sae."""

    layer: int = -1
    spec: ClassVar[filters.TableSpec] = filters.FEATURES


@dataclass(frozen=True)
class PromptTable(Table):
    """One row per committed prompt, for the prompt lists."""

    spec: ClassVar[filters.TableSpec] = filters.PROMPTS


def prompt_table(study: Study) -> PromptTable:
    return PromptTable(columns={
        "prompt": np.arange(study.n_prompts), "label": study.labels, "refusal_score": study.column("refusal_score"),
        "refused": study.column("refused"), "tokens": np.diff(study.token_offsets), "text": study.column("text"),
    })


def feature_table(study: Study, layer: int, run: str = "default") -> FeatureTable:
    codes = study.codes(layer)
    d_sae = codes.d_sae
    stats = codes.stats()
    labels = list(stats.get("labels", []))

    def per_label(name: str, label: str) -> np.ndarray:
        if name in stats and label in labels:
            return stats[name][labels.index(label)].astype(np.float32)
        return np.full(d_sae, np.nan, np.float32)

    nan = np.full(d_sae, np.nan, np.float32)
    columns = {
        "latent": np.arange(d_sae), "cosine": nan.copy(), "attribution": nan.copy(),
        "freq_harmful": per_label("prompt_freq", "harmful"), "freq_harmless": per_label("prompt_freq", "harmless"),
        "max_active": stats.get("max_active", nan).astype(np.float32),
        "minimal_sets": np.zeros(d_sae, np.int32), "fm_weight": nan.copy(), "fm_interaction": nan.copy(),
        "dormant": np.zeros(d_sae, np.int8),
    }
    columns["freq_diff"] = columns["freq_harmful"] - columns["freq_harmless"]
    candidates = CandidateResult.load(study, run)
    if candidates is not None and candidates.layer == layer:
        columns["cosine"], columns["attribution"] = candidates.cosine, candidates.attribution
    greedy = GreedyResult.load(study, run)
    if greedy is not None and greedy.layer == layer:
        for s in np.flatnonzero(greedy.flips()):  # a search that did not flip found no set
            columns["minimal_sets"][greedy.latents_of(s)] += 1
    fm = FMResult.load(study, run)
    if fm is not None and fm.layer == layer:
        columns["fm_weight"][fm.latents] = fm.w
        columns["fm_interaction"][fm.latents] = fm.interaction_share
    dormant = DormantResult.load(study, run)
    if dormant is not None:
        columns["dormant"][dormant.latent[dormant.layer == layer]] = 1
    return FeatureTable(columns=columns, layer=layer)


@dataclass(frozen=True)
class ActivationExample:
    """One prompt where a latent fires: its tokens and the latent's activation on each."""

    prompt: int
    label: str
    tokens: list[str]
    activations: np.ndarray  # float32 [n_tokens]
    peak_position: int
    peak_value: float


@dataclass(frozen=True)
class FeatureDetail:
    layer: int
    latent: int
    stats: dict[str, float]
    examples: list[ActivationExample]
    histogram: tuple[np.ndarray, np.ndarray]  # (counts, bin edges) of its non-zero activations
    logit_lens_top: list[str]
    logit_lens_bottom: list[str]
    fm_partners: list[tuple[int, float]]  # (latent, <v_i, v_j>), strongest first
    minimal_sets: list[int]  # indices of the greedy sets containing it
    dormant: dict[str, float] = field(default_factory=dict)


class StudyBrowser:
    """One open study and analysis run, with the reads every view repeats cached.

    Thread-safe: viewers call it from worker threads. h5py serialises file access itself; the
    lock only guards the cache. Two workers may compute the same entry once each.
    """

    def __init__(self, study: Study, run: str = "default") -> None:
        self.study = study
        self.run = run
        self._cache: dict[object, object] = {}
        self._lock = threading.Lock()

    def cached(self, key: object, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._cache:
                return self._cache[key]  # type: ignore[return-value]
        value = compute()
        with self._lock:
            return self._cache.setdefault(key, value)  # type: ignore[return-value]

    def result(self, kind: type[R]) -> R | None:
        return self.cached(("result", kind.STAGE), lambda: kind.load(self.study, self.run))

    def codes(self, layer: int) -> LayerCodes:
        """One LayerCodes per layer, so its token index is read once."""
        return self.cached(("codes", layer), lambda: self.study.codes(layer))

    def stats(self, layer: int) -> dict[str, np.ndarray]:
        return self.cached(("stats", layer), lambda: self.codes(layer).stats())

    def fm_interaction(self) -> np.ndarray | None:
        fm = self.result(FMResult)
        return None if fm is None else self.cached("fm_interaction", fm.interaction)

    def feature_table(self, layer: int) -> FeatureTable:
        return self.cached(("table", layer), lambda: feature_table(self.study, layer, self.run))

    def feature_detail(self, layer: int, latent: int, k: int = 10) -> FeatureDetail:
        """Everything the feature view shows, from one contiguous read of the latent's CSC slice:
        the examples' per-token activations come from that slice too, not from each example
        prompt's CSR codes, which keeps a click well under 100 ms on 1M-token studies."""
        study, codes, stats = self.study, self.codes(layer), self.stats(layer)
        rows, values = codes.latent_entries(latent)
        labels = [str(label) for label in stats.get("labels", [])]
        summary = {"active_tokens": float(len(values)), "max_active": float(values.max()) if len(values) else 0.0}
        for name in ("prompt_freq", "token_freq", "mean_active"):
            for label in labels:
                summary[f"{name}_{label}"] = float(stats[name][labels.index(label), latent])
        if "decoder_norm" in stats:
            summary["decoder_norm"] = float(stats["decoder_norm"][latent])
        offsets = study.token_offsets
        examples = []
        for prompt, position, value in codes.top_activations(latent, k):
            start, stop = int(offsets[prompt]), int(offsets[prompt + 1])
            activations = np.zeros(stop - start, np.float32)
            low, high = np.searchsorted(rows, [start, stop])  # CSC rows ascend within a latent
            activations[rows[low:high] - start] = values[low:high]
            tokens = study.token_strings(study.token_ids(prompt))
            examples.append(ActivationExample(prompt, str(study.labels[prompt]), tokens, activations, position, value))
        histogram = np.histogram(values, bins=20) if len(values) else (np.zeros(0), np.zeros(0))

        def lens(name: str) -> list[str]:
            return study.token_strings(stats[name][latent]) if name in stats else []

        return FeatureDetail(layer, latent, summary, examples, histogram, lens("logit_lens_top"),
                             lens("logit_lens_bottom"), self._partners(layer, latent), self._sets(layer, latent),
                             self._dormant(layer, latent))

    def _partners(self, layer: int, latent: int) -> list[tuple[int, float]]:
        fm, interaction = self.result(FMResult), self.fm_interaction()
        if fm is None or interaction is None or fm.layer != layer or latent not in fm.latents:
            return []
        row = interaction[int(np.flatnonzero(fm.latents == latent)[0])]
        return [(int(fm.latents[j]), float(row[j])) for j in np.argsort(-np.abs(row))[:8] if row[j] != 0]

    def _sets(self, layer: int, latent: int) -> list[int]:
        greedy = self.result(GreedyResult)
        if greedy is None or greedy.layer != layer:
            return []
        return [int(s) for s in np.flatnonzero(greedy.flips()) if latent in greedy.latents_of(s)]

    def _dormant(self, layer: int, latent: int) -> dict[str, float]:
        table = self.result(DormantResult)
        if table is None:
            return {}
        hits = np.flatnonzero((table.latent == latent) & (table.layer == layer))
        if not len(hits):
            return {}
        i = hits[0]
        return {"baseline": float(table.baseline_activation[i]), "ablated": float(table.ablated_activation[i]),
                "refusal_effect": float(table.refusal_effect[i])}


def feature_detail(study: Study, layer: int, latent: int, run: str = "default", k: int = 10) -> FeatureDetail:
    """One feature's detail, without keeping caches (see ``StudyBrowser`` for repeated calls)."""
    return StudyBrowser(study, run).feature_detail(layer, latent, k)


@dataclass(frozen=True)
class PromptView:
    index: int
    text: str
    label: str
    tokens: list[str]
    refusal_score: float
    refused: int
    generation: str
    colour: np.ndarray | None  # float32 [n_tokens]: the chosen latent's activation per token
    ablations: list[tuple[np.ndarray, str, float]]  # (minimal set, ablated generation, score) per flipping set
    no_flip: list[tuple[int, float]] = field(default_factory=list)  # (k, score with all k ablated) per search that did not flip


def prompt_view(study: Study, index: int, layer: int | None = None, latent: int | None = None, run: str = "default") -> PromptView:
    record = study.prompt(index)
    colour = None
    if layer is not None and latent is not None and study.has_codes(layer):
        colour = study.codes(layer).prompt_dense(index, np.array([latent]))[:, 0]
    ablations, no_flip = [], []
    greedy = GreedyResult.load(study, run)
    if greedy is not None:
        flips = greedy.flips()
        for s in np.flatnonzero(greedy.prompt == index):
            if flips[s]:
                ablations.append((greedy.latents_of(s), str(greedy.ablated_generation[s]), float(greedy.final_score[s])))
            else:
                no_flip.append((int(greedy.k), float(greedy.start_score[s])))
    return PromptView(index, record.text, record.label, record.tokens, record.refusal_score, record.refused,
                      record.generation, colour, ablations, no_flip)


def greedy_counts(study: Study, run: str = "default") -> dict[str, int] | None:
    """The greedy stage's counts (``info --json``): refused harmful prompts (fast score above the
    study's threshold), prompts searched, flipping sets, and those confirmed by generation."""
    greedy = GreedyResult.load(study, run)
    if greedy is None:
        return None
    refused = (study.column("label") == "harmful") & (study.column("refusal_score") > study.meta.refusal_threshold)
    return greedy.counts(int(refused.sum()))


# Every stage a run can hold, in pipeline order, with the command that produces it. The
# refusal-tokens and evaluate results live in modules that import torch, so they are named here.
STAGE_COMMANDS: tuple[tuple[str, str], ...] = (
    ("refusal-tokens", "refusal-explorer analyze refusal-tokens"),
    *((kind.STAGE, kind.COMMAND) for kind in (*RESULT_TYPES, *PAPER2_RESULT_TYPES)),
    ("evaluate", "refusal-explorer evaluate"),
)


SAE_FREE_STAGES = frozenset({"refusal-tokens", "direction", "evaluate"})
"""The stages that read no SAE codes (the CLI's ``needs_sae=False`` stages, and `evaluate`)."""

NEEDS_SAE_CODES = "needs SAE codes, which this study lacks: cache again with --sae LAYER=DIR (train one with train-sae)"
"""What a viewer says instead of a command for a stage this study cannot run."""


def analyses_present(study: Study, run: str = "default") -> dict[str, str | None]:
    """Stage name → None if present, else the command that produces it, or NEEDS_SAE_CODES
    where the stage needs SAE codes and the study has none (e.g. a `--model qwen-1.5b` study)."""
    present = set()
    if run in study.analysis_runs():
        present = {name for name in study.file[f"analysis/{run}"]}
    codeless = not any(study.has_codes(layer) for layer in study.meta.layers)
    return {
        stage: None if stage in present else NEEDS_SAE_CODES if codeless and stage not in SAE_FREE_STAGES else command
        for stage, command in STAGE_COMMANDS
    }


def next_step(command: str) -> str:
    """``"run: COMMAND"``, or the reason a stage cannot run on this study."""
    return command if command == NEEDS_SAE_CODES else f"run: {command}"


def text_plot(xs: np.ndarray, ys: np.ndarray, *, width: int = 60, height: int = 12) -> str:
    """A small scatter/line plot in text, for terminals: y against x with labelled axes."""
    if len(xs) == 0:
        return "(no data)"
    x_low, x_high = float(np.min(xs)), float(np.max(xs))
    y_low, y_high = float(np.min(ys)), float(np.max(ys))
    grid = [[" "] * width for _ in range(height)]
    for x, y in zip(xs, ys):
        col = 0 if x_high == x_low else round((x - x_low) / (x_high - x_low) * (width - 1))
        row = 0 if y_high == y_low else round((y_high - y) / (y_high - y_low) * (height - 1))
        grid[row][col] = "●"
    lines = [f"{y_high:8.2f} ┤" + "".join(grid[0])]
    lines += ["         │" + "".join(row) for row in grid[1:-1]]
    lines += [f"{y_low:8.2f} ┤" + "".join(grid[-1]), "         └" + "─" * width,
              f"          {x_low:<10g}{'':>{max(0, width - 20)}}{x_high:>10g}"]
    return "\n".join(lines)

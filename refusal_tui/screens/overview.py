"""Overview: model, SAEs and layers, prompts and refusal rates, the direction, the analyses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from cache.sae_info import sae_source_text
from explorer.browse import next_step
from explorer.headlines import headlines
from explorer.results import CandidateResult, DirectionResult, DormantResult, FMResult, GreedyResult
from refusal_tui.render import bar
from refusal_tui.screens.base import StudyScreen


@dataclass(frozen=True)
class Overview:
    summary: dict[str, Any]
    analyses: dict[str, str | None]
    direction: DirectionResult | None
    candidates: CandidateResult | None
    greedy: GreedyResult | None
    fm: FMResult | None
    dormant: DormantResult | None
    layer: int
    layers_with_codes: tuple[int, ...]
    headlines: list[tuple[str, str]]  # the second paper's stages and evaluate (explorer/headlines.py)


class OverviewScreen(StudyScreen):
    NAV = "overview"
    AUTO_FOCUS = "#overview"

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="overview"):
            yield Static(id="ov-study")
            yield Static(id="ov-prompts")
            yield Static(id="ov-results")
            yield Static(id="ov-analyses")

    def fetch(self) -> Overview:
        data = self.data
        return Overview(
            summary=data.summary(), analyses=data.analyses(), direction=data.direction(),
            candidates=data.candidates(), greedy=data.greedy(), fm=data.fm(), dormant=data.dormant(),
            layer=data.layer, layers_with_codes=data.layers_with_codes, headlines=headlines(data.study, data.run),
        )

    def show(self, result: Overview) -> None:
        self.query_one("#ov-study", Static).update(study_text(result))
        self.query_one("#ov-prompts", Static).update(prompts_text(result.summary))
        self.query_one("#ov-results", Static).update(results_text(result))
        self.query_one("#ov-analyses", Static).update(analyses_text(result.analyses, self.data.run))


class Fields:
    """Name/value lines whose values wrap under themselves (a two-column grid)."""

    def __init__(self) -> None:
        self.grid = Table.grid(padding=(0, 1))
        self.grid.add_column(style="bold", no_wrap=True, width=10)
        self.grid.add_column(ratio=1)

    def add(self, name: str, value: str) -> None:
        self.grid.add_row(name, Text(value))


def study_text(result: Overview) -> Table:
    summary = result.summary
    text = Fields()
    text.add("Study", f"{summary['path']} ({'complete' if summary['complete'] else 'INCOMPLETE'}, "
                          f"schema {summary['schema_version']}, {summary['created_at'] or 'date unknown'})")
    revision = f" @ {summary['model_revision']}" if summary["model_revision"] else ""
    text.add("Model", f"{summary['model']}{revision}")
    text.add("Layers", ", ".join(map(str, summary["layers"])) +
           f" · {summary['n_positions']} post-instruction positions (residuals: {summary['positions']})")
    for layer, info in sorted(summary["saes"].items(), key=lambda item: int(item[0])):
        codes = "codes" if int(layer) in result.layers_with_codes else "no codes"
        text.add(f"SAE L{layer}", f"{sae_source_text(info)} · {codes}")
    if not summary["saes"]:
        text.add("SAEs", "none: cache SAE codes with `refusal-explorer cache --sae LAYER=…`")
    text.add("Tokens", f"{summary['tokens']:,} · features shown for layer {result.layer}")
    return text.grid


def prompts_text(summary: dict[str, Any]) -> Text:
    text = Text()
    threshold = summary["refusal_threshold"]
    text.append(f"{'Prompts':<10}{'count':>8}  {'refusal score > ' + format(threshold, 'g'):<30}{'refused (generation)':>20}\n",
                style="bold")
    for label, count in summary["prompts"].items():
        rate = summary["refusal_rate"].get(label, float("nan"))
        generated = summary["refused_by_generation"].get(label)
        style = "red" if label == "harmful" else "green" if label == "harmless" else ""
        text.append(f"{label:<10}{count:>8,}  ")
        text.append(bar(rate, 20).ljust(20), style=style)
        text.append(f" {rate:7.1%}  ")
        text.append(f"{generated:>18.1%}\n" if generated is not None else f"{'not generated':>18}\n")
    text.rstrip()
    return text


def results_text(result: Overview) -> Table:
    text = Fields()
    direction = result.direction
    if direction is not None:
        best = np.argsort(-direction.refusal_drop)[:3]
        candidates = ", ".join(
            f"L{direction.candidate_layer[i]}/{direction.candidate_position[i]} drop {direction.refusal_drop[i]:.2f}"
            for i in best
        )
        text.add("Direction", f"layer {direction.layer}, position {direction.position}: harmful score "
                                  f"{direction.baseline_score:.2f} → {direction.ablated_score:.2f} when ablated")
        text.add("", f"best of {len(direction.refusal_drop)} candidates: {candidates}")
        if not np.isnan(direction.argmax_change_rate):
            control = direction.random_argmax_change
            noise = f" (random directions: {control.min():.0%}–{control.max():.0%})" if len(control) else ""
            text.add("", f"harmless first tokens changed by ablation: {direction.argmax_change_rate:.0%}{noise}")
    if result.candidates is not None:
        top = ", ".join(map(str, result.candidates.top_cosine[:8]))
        text.add("Latents", f"layer {result.candidates.layer} · top by cosine: {top} · "
                                f"overlap with attribution {result.candidates.overlap:.0%}")
    if result.greedy is not None:
        greedy = result.greedy
        flips = greedy.flips() & greedy.per_prompt()
        sizes = np.diff(greedy.set_offsets)[flips]
        searched = int(greedy.per_prompt().sum())
        confirmed = int((greedy.flipped[flips] == 1).sum())
        text.add("Min sets", f"{len(sizes)} sets flip, from {searched} searched prompts (layer {greedy.layer}, within "
                                 f"the top {greedy.k}) · sizes {sizes.min() if len(sizes) else 0}–"
                                 f"{sizes.max() if len(sizes) else 0} · {confirmed}/{len(sizes)} confirmed by generation")
    if result.fm is not None:
        fm = result.fm
        text.add("FM", f"{len(fm.latents)} latents · R² train {fm.r2_train:.2f} · holdout {fm.r2_holdout:.2f} "
                           f"(linear {fm.r2_linear_holdout:.2f})")
    if result.dormant is not None:
        restores = int(np.sum(result.dormant.restores_refusal))
        text.add("Dormant", f"{len(result.dormant.latent)} latents wake up when the set is ablated · "
                                f"{restores} restore refusal")
    for name, line in result.headlines:
        text.add(name, line)
    if not text.grid.row_count:
        text.add("Results", "no analyses in this run yet: the commands below produce them")
    return text.grid


def analyses_text(analyses: dict[str, str | None], run: str) -> Text:
    text = Text(f"Analyses (run '{run}'): ", style="bold")
    present = [stage for stage, command in analyses.items() if command is None]
    for stage in present:
        text.append("✓ ", style="bold green")
        text.append(f"{stage}  ")
    if not present:
        text.append("none yet", style="italic")
    for stage, command in analyses.items():
        if command is not None:
            text.append("\n ✗ ", style="bold red")
            text.append(f"{stage:<16}", style="dim")
            text.append(next_step(command))
    text.rstrip()
    return text

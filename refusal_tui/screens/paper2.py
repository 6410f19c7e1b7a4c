"""The second paper's analyses (Yeo et al. 2025): latent graph, harm categories, jailbreak
wrappers, sparse probes. Each view reads its stage's result only; enter on a latent opens its
detail."""

from __future__ import annotations

import math

import numpy as np
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static, Tree

from explorer.results_paper2 import CategoryResult, GraphResult, JailbreakResult, ProbeResult
from explorer.stats import wilson
from refusal_tui.render import heat_scale, heat_style
from refusal_tui.screens.base import MissingData, StudyScreen


def _num(value: float, fmt: str = "+.2f") -> str:
    return "n/a" if value is None or math.isnan(float(value)) else format(float(value), fmt)


class GraphScreen(StudyScreen):
    """Upstream latents → downstream latents → refusal score, as an indented tree with weights."""

    NAV = "graph"
    AUTO_FOCUS = "#graph-tree"

    def compose_body(self) -> ComposeResult:
        yield Static(id="graph-head")
        yield Tree("refusal score", id="graph-tree")

    def fetch(self) -> GraphResult:
        result = self.data.browser.result(GraphResult)
        if result is None:
            raise MissingData(self.data.missing("graph"))
        return result

    def show(self, result: GraphResult) -> None:
        self.query_one("#graph-head", Static).update(Text(
            f"Layer {result.upstream_layer} → {result.downstream_layer} on {len(result.prompts)} refused harmful prompts · "
            f"{result.n_edges} edges kept (|weight| ≥ {result.threshold:.3f}, control floor {_num(result.control_floor, '.3f')}) · "
            f"measured vs gradient: Spearman {_num(result.spearman)}, signs agree on {_num(result.sign_agreement, '.0%')} · "
            "weight = downstream activation lost when the upstream latent is ablated (est. = gradient × activation) · "
            "enter opens a latent", style="dim"))
        tree = self.query_one("#graph-tree", Tree)
        tree.clear()
        tree.root.set_label(f"refusal score (mean {result.baseline_score:+.2f})")
        order = np.argsort(-np.abs(result.upstream_score), kind="stable")
        for i in order:
            u = int(result.upstream[i])
            node = tree.root.add(
                Text(f"L{result.upstream_layer}#{u}  score drop {result.upstream_score[i]:+.3f} when ablated "
                     f"(est. {result.upstream_score_estimate[i]:+.3f})", style="bold"),
                data=(result.upstream_layer, u), expand=True)
            kept = [j for j in np.argsort(-np.abs(result.weight[i]), kind="stable") if result.kept[i, j]]
            if not kept:
                node.add_leaf(Text("no edge above the threshold and the control floor", style="dim"))
            for j in kept:
                d, w = int(result.downstream[j]), float(result.weight[i, j])
                style = "green" if w > 0 else "red"
                node.add_leaf(Text.assemble(
                    (f"{'excites' if w > 0 else 'inhibits'} ", style), f"L{result.downstream_layer}#{d}  weight ",
                    (f"{w:+.3f}", style), f" (est. {result.estimate[i, j]:+.3f}) · its score drop {result.downstream_score[j]:+.3f}"),
                    data=(result.downstream_layer, d))
        tree.root.expand()

    @on(Tree.NodeSelected, "#graph-tree")
    def _selected(self, event: Tree.NodeSelected) -> None:
        if event.node.data is not None:
            layer, latent = event.node.data
            self.open_latent(int(latent), int(layer))


class CategoriesScreen(StudyScreen):
    """Per-category refusal latents (shared / specific) and the transfer matrix."""

    NAV = "categories"
    AUTO_FOCUS = "#cat-table"

    def __init__(self) -> None:
        super().__init__()
        self.result: CategoryResult | None = None

    def compose_body(self) -> ComposeResult:
        yield Static(id="cat-head")
        yield DataTable(id="cat-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="cat-detail"):
            yield Static(id="cat-transfer")

    def fetch(self) -> CategoryResult:
        result = self.data.browser.result(CategoryResult)
        if result is None:
            raise MissingData(self.data.missing("categories"))
        return result

    def show(self, result: CategoryResult) -> None:
        self.result = result
        chance = result.control_specific
        chance_text = f"label-shuffled chance {chance.mean():.1f} (95th pct {np.percentile(chance, 95):.1f})" if len(chance) else "no shuffles"
        n_specific = len(result.specific_latents)
        verdict = "" if len(chance) and n_specific > np.percentile(chance, 95) else " · no evidence of specific latents beyond chance"
        self.query_one("#cat-head", Static).update(Text(
            f"Layer {result.layer} · {len(result.categories)} categories from {result.source} · shared by all: "
            f"{', '.join(map(str, result.shared_attribution.tolist())) or 'none'} · {n_specific} specific ({chance_text}){verdict}"
            " · enter opens the category's first specific (else top) latent", style="dim"))
        table = self.query_one("#cat-table", DataTable)
        table.clear(columns=True)
        table.add_columns("category", "prompts", "top latents (attribution)", "specific", "top by activation diff")
        for c, name in enumerate(result.categories.tolist()):
            table.add_row(str(name), str(int(result.category_size[c])), ", ".join(map(str, result.top_of(c)[:8].tolist())),
                          Text(", ".join(map(str, result.specific_of(c).tolist())) or "—", style="bold"),
                          ", ".join(map(str, result.top_of(c, "activation")[:6].tolist())), key=str(c))
        names = [str(n) for n in result.categories.tolist()]
        rates = result.transfer_rates()
        width = max(len(n) for n in [*names, "random"])
        text = Text("Transfer: row's top latents ablated → share of the column's refused prompts that flip (fast score)\n")
        text.append(" " * (width + 2) + " ".join(f"{n[:8]:>8}" for n in names) + "\n")
        for a, row in enumerate([*names, "random"]):
            text.append(f"{row:<{width}}  ")
            for r in rates[a]:
                text.append("     n/a" if math.isnan(r) else f"{r:>8.0%}", style="" if math.isnan(r) else heat_style(float(r), 1.0))
                text.append(" ")
            text.append("\n")
        text.append_text(heat_scale(1.0, "flip rate colour scale", ".0%"))
        text.append("\nrefused per category: " + ", ".join(f"{n} {int(k)}" for n, k in zip(names, result.transfer_refused)))
        self.query_one("#cat-transfer", Static).update(text)

    @on(DataTable.RowSelected, "#cat-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if self.result is None or event.row_key.value is None:
            return
        c = int(event.row_key.value)
        latents = self.result.specific_of(c)
        latents = latents if len(latents) else self.result.top_of(c)
        if len(latents):
            self.open_latent(int(latents[0]), int(self.result.layer))


class JailbreakScreen(StudyScreen):
    """Refusal rate and refusal-latent change per wrapper, and the damping tokens."""

    NAV = "jailbreak"
    AUTO_FOCUS = "#jb-table"

    def __init__(self) -> None:
        super().__init__()
        self.result: JailbreakResult | None = None
        self.most_damped: dict[int, int] = {}  # wrapper row → its most damped latent

    def compose_body(self) -> ComposeResult:
        yield Static(id="jb-head")
        yield DataTable(id="jb-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="jb-detail"):
            yield Static(id="jb-tokens")

    def fetch(self) -> JailbreakResult:
        result = self.data.browser.result(JailbreakResult)
        if result is None:
            raise MissingData(self.data.missing("jailbreak"))
        return result

    def show(self, result: JailbreakResult) -> None:
        self.result = result
        plain = int((result.plain_score > result.threshold).sum())
        low, high = wilson(plain, len(result.plain_score))
        self.query_one("#jb-head", Static).update(Text(
            f"Layer {result.layer} · refusal latents {', '.join(map(str, result.latents.tolist()))} · plain prompts refused "
            f"{plain}/{len(result.plain_score)} (95% CI {_num(low, '.0%')}–{_num(high, '.0%')}) · fast score > {result.threshold:g} · "
            "enter opens the wrapper's most damped latent", style="dim"))
        table = self.query_one("#jb-table", DataTable)
        table.clear(columns=True)
        table.add_columns("wrapper", "kind", "refused", "95% CI", "Δscore", "Δlatents", "most damped")
        for w, (name, refused, n) in enumerate(result.rates()):
            rows = result.pair_wrapper == w
            plain_rows = result.pair_plain[rows]
            low, high = wilson(refused, n)
            per_latent = (result.wrapped_latents[rows] - result.plain_latents[plain_rows]).mean(0)
            k = int(np.argmin(per_latent))
            table.add_row(name, str(result.wrapper_kind[w]), f"{refused}/{n}", f"{_num(low, '.0%')}–{_num(high, '.0%')}",
                          f"{(result.wrapped_score[rows] - result.plain_score[plain_rows]).mean():+.2f}",
                          f"{per_latent.sum():+.2f}", f"#{int(result.latents[k])} {per_latent[k]:+.2f}", key=str(w))
            self.most_damped[w] = int(result.latents[k])
        lines = ["Damping wrapper tokens (summed input × gradient on the refusal latents; negative = damps):"]
        damping = [(t, a, c) for t, a, c in zip(result.token.tolist(), result.token_attribution, result.token_count) if a < 0]
        lines += [f"  {t!r:<18} {a:+.3f}  in {c} prompts" for t, a, c in damping[:15]] or ["  none: no evidence of damping tokens"]
        for v, token in enumerate(result.verified_token.tolist()):
            change = result.verified_latent_change[v]
            verdict = "confirmed" if change.sum() > 0 else "NOT confirmed"
            lines.append(f"  occlusion {token!r}: latents {change.sum():+.3f}, score {result.verified_score_change[v]:+.3f} "
                         f"over {int(result.verified_rows[v])} prompts → {verdict}")
        self.query_one("#jb-tokens", Static).update(Text("\n".join(lines)))

    @on(DataTable.RowSelected, "#jb-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if self.result is not None and event.row_key.value is not None:
            self.open_latent(self.most_damped[int(event.row_key.value)], int(self.result.layer))


class ProbeScreen(StudyScreen):
    """Accuracy and AUROC of the three probes on each test set, with intervals."""

    NAV = "probe"
    AUTO_FOCUS = "#probe-table"

    def compose_body(self) -> ComposeResult:
        yield Static(id="probe-head")
        yield DataTable(id="probe-table", cursor_type="row", zebra_stripes=True)

    def fetch(self) -> ProbeResult:
        result = self.data.browser.result(ProbeResult)
        if result is None:
            raise MissingData(self.data.missing("probe"))
        return result

    def show(self, result: ProbeResult) -> None:
        self.query_one("#probe-head", Static).update(Text(
            f"Layer {result.layer} · logistic probes trained on {result.n_train} plain prompts · refusal latents "
            f"{', '.join(map(str, result.latents.tolist()))} vs {result.random_latents.shape[1]} random active latents "
            f"({result.random_latents.shape[0]} seeds, mean) vs the dense residual · 95% bootstrap intervals", style="dim"))
        table = self.query_one("#probe-table", DataTable)
        table.clear(columns=True)
        table.add_columns("probe", "test set", "n", "accuracy", "95% CI", "AUROC", "95% CI")
        for j, probe in enumerate(result.probes.tolist()):
            for t, name in enumerate(result.sets.tolist()):
                a_low, a_high = result.accuracy_interval[j, t]
                r_low, r_high = result.auroc_interval[j, t]
                table.add_row(probe, name, str(int(result.set_size[t])), _num(result.accuracy[j, t], ".2f"),
                              f"{_num(a_low, '.2f')}–{_num(a_high, '.2f')}", _num(result.auroc[j, t], ".2f"),
                              f"{_num(r_low, '.2f')}–{_num(r_high, '.2f')}")


PAPER2_SCREENS = {"graph": GraphScreen, "categories": CategoriesScreen, "jailbreak": JailbreakScreen, "probe": ProbeScreen}
"""Mode name → screen, for the app's MODES."""

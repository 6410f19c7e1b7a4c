"""One line per later-stage result (the second paper's four stages and `evaluate`), for the
overviews of both viewers, so the TUI and the web app say the same sentence from the same numbers.

Each line carries its evidence (the control it is read against, the interval); where the evidence
is absent it says "no evidence of …". Reads the study only (numpy, no torch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from explorer.results_paper2 import CategoryResult, GraphResult, JailbreakResult, ProbeResult
from store import Study, read_stage

EVALUATE_STAGE = "evaluate"  # explorer/benchmark.py's STAGE; that module imports torch


def graph_line(graph: GraphResult) -> str:
    span = f"L{graph.upstream_layer} → L{graph.downstream_layer}"
    floor = "" if np.isnan(graph.control_floor) else f", random-latent control floor {graph.control_floor:.3g}"
    if not graph.n_edges:
        return (f"no evidence of {span} edges: none of {graph.weight.size} measured pairs passes |weight| ≥ "
                f"{graph.threshold:.3g}{floor}")
    return (f"{graph.n_edges} of {graph.weight.size} {span} edges kept (|weight| ≥ {graph.threshold:.3g}{floor}) · "
            f"measured vs gradient estimate: Spearman {graph.spearman:+.2f}, signs agree on {graph.sign_agreement:.0%}")


def categories_line(result: CategoryResult) -> str:
    shared, specific = len(result.shared_attribution), len(result.specific_latents)
    chance_shared = float(np.mean(result.control_shared)) if len(result.control_shared) else float("nan")
    chance_specific = float(np.mean(result.control_specific)) if len(result.control_specific) else float("nan")
    return (f"{len(result.categories)} categories · {shared} latents in every category's top {result.top_k} "
            f"(shuffled labels: {chance_shared:.1f}) · {specific} category-specific (shuffled: {chance_specific:.1f})")


def jailbreak_line(result: JailbreakResult) -> str:
    plain = int((result.plain_score > result.threshold).sum())
    rates = [(name, refused / n) for name, refused, n in result.rates() if n]
    text = f"{len(result.plain_text)} requests, plain refusal {plain}/{len(result.plain_text)} (fast score)"
    if rates:
        name, rate = min(rates, key=lambda item: item[1])
        text += f" · lowest under a wrapper: {name} {rate:.0%}"
    # Confirmed as the stage confirms it: zeroing the token raises the refusal latents' total code.
    confirmed = [str(t) for t, change in zip(result.verified_token, result.verified_latent_change) if change.sum() > 0]
    if len(result.verified_token):
        text += (f" · damping tokens confirmed by occlusion: {', '.join(repr(t) for t in confirmed)}" if confirmed
                 else " · no evidence of a damping token (none confirmed by occlusion)")
    return text


def probe_line(result: ProbeResult) -> str:
    cells = []
    for t, name in enumerate(result.sets):
        values = "/".join(f"{result.auroc[p, t]:.2f}" for p in range(len(result.probes)))
        cells.append(f"{name} {values}")
    return f"AUROC refusal latents / random latents / dense (k={len(result.latents)}): " + " · ".join(cells)


def evaluate_line(summary: dict[str, Any], order: list[str] | None = None) -> str:
    """``order``: the interventions as run (the stored summary's keys come back sorted)."""
    parts = []
    entries = summary.get("interventions", {})
    names = [n for n in (order or []) if n in entries] + [n for n in entries if n not in (order or [])]
    for name, entry in ((n, entries[n]) for n in names):
        rates = entry.get("refusal_rate", {})
        judge = "substring" if "substring" in rates else next(iter(rates), None)
        if judge is None or rates[judge] is None:
            continue
        low, high = entry.get("refusal_interval", {}).get(judge, (None, None))
        interval = f" [{low:.0%}–{high:.0%}]" if low is not None and high is not None else ""
        flipped = (entry.get("flipped") or {}).get(judge) or {}
        paired = f" (flips {flipped['k']}/{flipped['n']} of the baseline's refusals)" if flipped.get("n") else ""
        parts.append(f"{name} {rates[judge]:.0%}{interval}{paired}")
    if not parts:
        return "no interventions evaluated yet"
    return "harmful refusal by substring judge (95% Wilson): " + " · ".join(parts)


def headlines(study: Study, run: str = "default") -> list[tuple[str, str]]:
    """(short name, line) for each of these stages present in ``run``, in pipeline order."""
    lines: list[tuple[str, str]] = []
    for name, kind, line in (("Graph", GraphResult, graph_line), ("Categories", CategoryResult, categories_line),
                             ("Jailbreak", JailbreakResult, jailbreak_line), ("Probe", ProbeResult, probe_line)):
        result = kind.load(study, run)
        if result is not None:
            lines.append((name, line(result)))
    stored = read_stage(study.file, run, EVALUATE_STAGE)
    if stored is not None:
        summary = stored.attrs.get("summary")
        order = [str(name) for name in stored.attrs.get("interventions", [])]
        lines.append(("Evaluate", evaluate_line(summary, order) if summary else "interrupted before its summary: run `refusal-explorer evaluate` again to finish"))
    return lines

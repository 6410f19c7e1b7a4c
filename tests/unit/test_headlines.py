"""The overview lines of the later stages (explorer/headlines.py): each carries its control, and
an absent effect reads "no evidence of …"."""

from __future__ import annotations

import dataclasses

import numpy as np

from explorer.headlines import categories_line, evaluate_line, graph_line, jailbreak_line, probe_line
from tests.paper2_synthetic import category_result, graph_result, jailbreak_result, probe_result


def test_graph_line_gives_edges_with_their_control_and_agreement() -> None:
    line = graph_line(graph_result(6, 8))
    assert line.startswith("3 of 6 L6 → L8 edges kept") and "control floor 0.02" in line
    assert "Spearman +0.95" in line and "signs agree on 100%" in line


def test_graph_line_without_edges_says_no_evidence() -> None:
    graph = graph_result(6, 8)
    empty = dataclasses.replace(graph, kept=np.zeros_like(graph.kept))
    assert graph_line(empty).startswith("no evidence of L6 → L8 edges: none of 6 measured pairs")


def test_categories_line_sets_counts_beside_shuffled_labels() -> None:
    line = categories_line(category_result())
    assert line == "2 categories · 1 latents in every category's top 2 (shuffled labels: 0.8) · 2 category-specific (shuffled: 0.2)"


def test_jailbreak_line_names_the_strongest_wrapper_and_confirmed_tokens() -> None:
    result = jailbreak_result()
    line = jailbreak_line(result)
    # threshold -1: plain both refused; fiction-novel 1 of 2 above it, prefix-sure 2 of 2
    assert "plain refusal 2/2" in line and "lowest under a wrapper: fiction-novel 50%" in line
    assert "confirmed by occlusion: ' fictional'" in line
    unconfirmed = dataclasses.replace(result, verified_latent_change=-result.verified_latent_change)
    assert "no evidence of a damping token" in jailbreak_line(unconfirmed)


def test_probe_line_lists_each_test_set() -> None:
    assert probe_line(probe_result()) == (
        "AUROC refusal latents / random latents / dense (k=3): in-distribution 0.95/0.70/0.97 · wrapped 0.85/0.50/0.52")


def test_evaluate_line_reads_the_substring_judge_with_intervals() -> None:
    summary = {"interventions": {
        "none": {"refusal_rate": {"substring": 0.5, "phrase": 0.6}, "refusal_interval": {"substring": [0.3, 0.7]}},
        "direction": {"refusal_rate": {"substring": 0.0}, "refusal_interval": {"substring": [0.0, 0.1]},
                      "flipped": {"substring": {"rate": 1.0, "k": 10, "n": 10}}},
    }}
    assert evaluate_line(summary) == ("harmful refusal by substring judge (95% Wilson): none 50% [30%–70%] · "
                                      "direction 0% [0%–10%] (flips 10/10 of the baseline's refusals)")
    assert evaluate_line({"interventions": {}}) == "no interventions evaluated yet"
    reordered = {"interventions": dict(sorted(summary["interventions"].items()))}  # as the stored JSON comes back
    assert evaluate_line(reordered, ["none", "direction"]).index("none") < evaluate_line(reordered, ["none", "direction"]).index("direction")

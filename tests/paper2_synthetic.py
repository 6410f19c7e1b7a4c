"""Hand-made results of the second paper's stages (graph, categories, jailbreak, probe) with
known contents, written into a copy of a synthetic study for the viewer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explorer.results_paper2 import CategoryResult, GraphResult, JailbreakResult, ProbeResult


def graph_result(layer: int = 6, later: int = 8) -> GraphResult:
    weight = np.array([[0.9, -0.5, 0.01], [0.02, 0.03, 0.4]], np.float32)
    kept = np.abs(weight) >= 0.1
    return GraphResult(
        upstream_layer=layer, downstream_layer=later, upstream=np.array([11, 12]), downstream=np.array([21, 22, 23]),
        weight=weight, estimate=weight * 0.9, kept=kept, upstream_score=np.array([0.8, 0.3], np.float32),
        upstream_score_estimate=np.array([0.7, 0.2], np.float32), downstream_score=np.array([0.5, -0.1, 0.2], np.float32),
        downstream_score_estimate=np.array([0.4, -0.1, 0.1], np.float32), upstream_activation=np.ones(2, np.float32),
        downstream_activation=np.ones(3, np.float32), control_latents=np.array([30, 31]), control_weight=np.full((2, 3), 0.02, np.float32),
        prompts=np.array([0, 1, 2]), threshold=0.09, control_floor=0.02, spearman=0.95, sign_agreement=1.0, score_spearman=0.9,
        baseline_score=2.5,
    )


def category_result(layer: int = 6, d_sae: int = 512) -> CategoryResult:
    attribution = np.zeros((2, d_sae), np.float32)
    attribution[0, [3, 5]] = [1.0, 0.8]
    attribution[1, [3, 7]] = [0.9, 0.6]
    return CategoryResult(
        layer=layer, source="study", categories=np.array(["fraud", "weapons"], dtype=object), category_size=np.array([4, 5]), n_harmless=8,
        attribution=attribution, activation_diff=attribution.copy(), top_offsets=np.array([0, 2, 4]), top_latents=np.array([3, 5, 3, 7]),
        top_activation_offsets=np.array([0, 2, 4]), top_activation_latents=np.array([3, 5, 3, 7]),
        shared_attribution=np.array([3]), shared_activation=np.array([3]), specific_offsets=np.array([0, 1, 2]),
        specific_latents=np.array([5, 7]), specific_activation_offsets=np.array([0, 1, 2]), specific_activation_latents=np.array([5, 7]),
        control_specific=np.array([0.0, 1.0, 0.0, 0.0], np.float32), control_shared=np.array([1.0, 1.0, 0.0, 1.0], np.float32),
        transfer_flips=np.array([[3, 1], [0, 4], [0, 0]]), transfer_refused=np.array([4, 5]), transfer_drop=np.zeros((3, 2), np.float32),
        control_latents=np.array([40, 41]), threshold=-1.0, top_k=2, specific_ratio=0.25,
    )


def jailbreak_result(layer: int = 6) -> JailbreakResult:
    return JailbreakResult(
        layer=layer, latents=np.array([3, 5]), wrappers=np.array(["fiction-novel", "prefix-sure"], dtype=object),
        wrapper_kind=np.array(["fiction", "prefix injection"], dtype=object), plain_text=np.array(["a", "b"], dtype=object),
        wrapped_text=np.array(["fa", "fb", "pa", "pb"], dtype=object), pair_plain=np.array([0, 1, 0, 1]), pair_wrapper=np.array([0, 0, 1, 1]),
        plain_score=np.array([2.0, 1.5], np.float32), wrapped_score=np.array([-2.0, 0.5, 1.0, 1.2], np.float32),
        plain_latents=np.array([[1.0, 1.0], [1.0, 1.0]], np.float32), wrapped_latents=np.array([[0.2, 0.9], [0.4, 1.0], [1.0, 0.8], [1.0, 0.9]], np.float32),
        token=np.array([" fictional", " novel", " Sure"], dtype=object), token_attribution=np.array([-1.5, -0.4, 0.2], np.float32),
        token_count=np.array([2, 2, 2]), verified_token=np.array([" fictional"], dtype=object),
        verified_latent_change=np.array([[0.6, 0.1]], np.float32), verified_score_change=np.array([1.1], np.float32), verified_rows=np.array([2]),
        threshold=-1.0, source="templates",
    )


def probe_result(layer: int = 6) -> ProbeResult:
    accuracy = np.array([[0.95, 0.85], [0.7, 0.5], [0.97, 0.52]], np.float32)
    return ProbeResult(
        layer=layer, latents=np.array([3, 5, 7]), random_latents=np.array([[1, 2, 4], [8, 9, 10]]),
        probes=np.array(["refusal latents", "random latents", "dense residual"], dtype=object),
        sets=np.array(["in-distribution", "wrapped"], dtype=object), set_size=np.array([20, 80]), set_positives=np.array([10, 40]),
        accuracy=accuracy, accuracy_interval=np.stack([accuracy - 0.05, accuracy + 0.03], -1), auroc=accuracy,
        auroc_interval=np.stack([accuracy - 0.05, accuracy + 0.03], -1), random_seed_accuracy=np.array([[0.7, 0.5], [0.7, 0.5]], np.float32),
        random_seed_auroc=np.array([[0.7, 0.5], [0.7, 0.5]], np.float32), train_accuracy=np.array([1.0, 0.8, 1.0], np.float32), n_train=40, l2=1.0,
    )


def write_paper2_results(path: Path, run: str = "default", *, layer: int = 6, d_sae: int = 512) -> None:
    """Write all four results into the study at ``path``."""
    for result in (graph_result(layer, layer), category_result(layer, d_sae), jailbreak_result(layer), probe_result(layer)):
        result.save(path, run, config={})

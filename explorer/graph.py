"""`analyze graph`: how refusal latents at an earlier SAE layer drive latents at a later one,
and both the refusal score (Yeo et al. 2025, the upstream→downstream graph).

Nodes: the top ``k_upstream`` latents at layer U and the top ``k_downstream`` at layer D > U,
ranked by gradient × activation on the refusal score (or given explicitly), and the score.

Edges, each measured and estimated, on the same refused harmful prompts:

* U-latent u → D-latent d: ``weight = a_d(clean) − a_d(u ablated)``, where a_d is d's code at
  layer D averaged over the post-instruction tokens and over the prompts; u is ablated at the
  post-instruction tokens of layer U through the batched evaluator (``explorer.evaluate``),
  the SAE error term kept. Positive: u excites d; negative: u inhibits d. The estimate is
  gradient × activation, ``Σ_t a_u,t · ∂a_d/∂a_u,t`` (the first-order change when a_u goes
  to zero).
* latent → score: ``score(clean) − score(latent ablated)`` (positive: the latent carries
  refusal), estimated by the same gradient × activation on the score.

An edge is kept when ``|weight|`` reaches the threshold (absolute, or a share of the largest)
and exceeds the noise floor: the 95th percentile of ``|weight|`` from random active U-latents
(controls) to the same D-latents. Agreement of the estimate with the measurement: Spearman's
rank correlation over every u→d pair, and the share of kept edges whose signs agree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.sae import decode, encode
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import LiveContext, prompt_token_ids, select_prompts
from explorer.live_features import attribution_per_prompt, post_instruction_mask
from explorer.results_paper2 import GraphResult
from explorer.stats import spearman
from store import Study
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class GraphConfig:
    upstream_layer: int | None = None
    """Layer U of the upstream latents (default: the first SAE layer of the study)."""
    downstream_layer: int | None = None
    """Layer D > U of the downstream latents (default: the next SAE layer after U)."""
    upstream: tuple[int, ...] | None = None
    """Upstream latents to use (default: the top ``k_upstream`` by attribution at U)."""
    downstream: tuple[int, ...] | None = None
    """Downstream latents to use (default: the top ``k_downstream`` by attribution at D)."""
    k_upstream: int = 8
    """Upstream latents when not given: the top by attribution at U."""
    k_downstream: int = 12
    """Downstream latents when not given: the top by attribution at D."""
    max_prompts: int = 8
    """Refused harmful prompts the edges are averaged over."""
    split: Literal["train", "all"] = "train"
    """Harmful prompts of the train split, or of every split."""
    threshold: float | None = None
    """Keep u→d edges with |weight| ≥ this (default: ``relative_threshold`` × the largest)."""
    relative_threshold: float = 0.1
    """Without --threshold: keep edges with |weight| ≥ this share of the largest."""
    controls: int = 4
    """Random active U-latents ablated as controls (their effects set the noise floor)."""
    seed: int = 0
    """Seed of the random control latents."""
    max_batch: int = 16
    """Rows (variant × prompt) per batched forward."""
    batch_size: int = 8
    """Prompts per gradient pass."""

    def __post_init__(self) -> None:
        if self.k_upstream < 1 or self.k_downstream < 1 or self.max_prompts < 1:
            raise InputError("--k-upstream, --k-downstream and --max-prompts must be ≥ 1")
        if self.controls < 0 or self.max_batch < 1 or self.batch_size < 1:
            raise InputError("--controls must be ≥ 0, --max-batch and --batch-size ≥ 1")
        if not 0 <= self.relative_threshold <= 1 or (self.threshold is not None and self.threshold < 0):
            raise InputError("--relative-threshold must be in [0, 1] and --threshold ≥ 0")
        if self.split not in ("train", "all"):
            raise InputError("--split must be train or all")


def graph_layers(study: Study, config: GraphConfig) -> tuple[int, int]:
    sae_layers = sorted(layer for layer in study.meta.saes if layer in study.meta.layers)
    upstream = config.upstream_layer if config.upstream_layer is not None else (sae_layers[0] if sae_layers else None)
    if upstream is None:
        raise InputError("this study has no SAE layers; cache it with `refusal-explorer cache --sae LAYER=…` at two layers")
    later = [layer for layer in sae_layers if layer > upstream]
    downstream = config.downstream_layer if config.downstream_layer is not None else (later[0] if later else None)
    if downstream is None:
        raise InputError(f"no SAE layer after {upstream}; the graph needs SAEs at two layers (e.g. --sae 14=… --sae 18=…)")
    if downstream <= upstream:
        raise InputError(f"the downstream layer ({downstream}) must come after the upstream layer ({upstream})")
    for layer in (upstream, downstream):
        if layer not in study.meta.saes:
            raise InputError(f"layer {layer} has no SAE in this study; run `refusal-explorer cache --sae {layer}=…` first")
    return upstream, downstream


def gradient_edges(
    ev: AblationEvaluator, sae_down: Any, layer: int, upstream: list[int], downstream: list[int], masks: list[torch.Tensor],
    batch: int, progress: bool,
) -> np.ndarray:
    """Gradient × activation estimate of ``a_d(clean) − a_d(u ablated)`` -> float32 [U, D],
    averaged over the evaluator's prompts like the measurement."""
    total = torch.zeros(len(upstream), len(downstream), dtype=torch.float64)
    up = torch.tensor(upstream)
    for start in tqdm(range(0, ev.n_prompts, batch), desc="edge gradients", unit="batch", disable=not progress):
        prompts = list(range(start, min(start + batch, ev.n_prompts)))
        codes = [ev.codes[p].detach().clone().requires_grad_(True) for p in prompts]
        with torch.enable_grad():
            later = ev.forward_to(prompts, [decode(ev.sae, c) + ev.error[p] for c, p in zip(codes, prompts)], layer)
            # a_d per prompt: mean code over its post-instruction tokens
            acts = torch.stack([encode(sae_down, h[masks[p]]).mean(0)[downstream] for h, p in zip(later, prompts)])  # [b, D]
            for j in range(len(downstream)):
                grads = torch.autograd.grad(acts[:, j].sum(), codes, retain_graph=j + 1 < len(downstream), allow_unused=True)
                for c, g, p in zip(codes, grads, prompts):
                    if g is None:
                        continue
                    contribution = (c.detach() * g)[masks[p]][:, up].sum(0)  # [U]
                    total[:, j] += contribution.double().cpu()
    return (total / ev.n_prompts).float().numpy()


def _top_positive(values: np.ndarray, k: int, exclude: set[int] = frozenset()) -> list[int]:
    order = np.argsort(-values, kind="stable")
    return [int(i) for i in order if values[i] > 0 and int(i) not in exclude][:k]


def run_graph(study: Study, live: LiveContext, config: GraphConfig, *, progress: bool = True) -> tuple[GraphResult, dict[str, Any]]:
    up_layer, down_layer = graph_layers(study, config)
    sae_up, sae_down = live.sae(up_layer), live.sae(down_layer)
    split = None if config.split == "all" else "train"
    prompts = select_prompts(study, label="harmful", split=split, refused=True)[: config.max_prompts]
    if not prompts:
        raise InputError("no refused harmful prompts in that split (by the fast score); the graph explains refusal, so it needs some")
    token_ids = prompt_token_ids(study, prompts)
    n_pos = live.n_positions
    positions = tuple(range(-n_pos, 0))
    ev_up = AblationEvaluator.from_live(live, token_ids, EvaluatorConfig(layer=up_layer, positions=positions, max_batch=config.max_batch))
    ev_down = AblationEvaluator.from_live(live, token_ids, EvaluatorConfig(layer=down_layer, positions=positions, max_batch=config.max_batch))
    masks = [post_instruction_mask(len(ids), n_pos, sae_up.W_dec.device) for ids in token_ids]

    attr_up = attribution_per_prompt(ev_up, masks, config.batch_size, progress=progress).mean(0)
    attr_down = attribution_per_prompt(ev_down, masks, config.batch_size, progress=progress).mean(0)
    upstream = list(config.upstream) if config.upstream is not None else _top_positive(attr_up, config.k_upstream)
    downstream = list(config.downstream) if config.downstream is not None else _top_positive(attr_down, config.k_downstream)
    for name, chosen, d_sae in (("upstream", upstream, ev_up.d_sae), ("downstream", downstream, ev_down.d_sae)):
        if not chosen:
            raise InputError(f"no {name} latent has a positive attribution on these prompts; give them with --{name}")
        if not all(0 <= i < d_sae for i in chosen):
            raise InputError(f"a {name} latent is out of range: the SAE has {d_sae} latents")

    active = ev_up.active_latents()
    rng = np.random.default_rng(config.seed)
    pool = np.array([i for i in active if int(i) not in set(upstream)], np.int64)
    controls = rng.choice(pool, size=min(config.controls, len(pool)), replace=False).astype(np.int64) if len(pool) else np.zeros(0, np.int64)

    # measured: one batched run from U, capturing D; row 0 ablates nothing
    sets = [[], *([u] for u in upstream), *([int(c)] for c in controls)]
    out = ev_up.run(ev_up.masks_of_sets(sets), capture=(down_layer,))
    acts = np.zeros((len(sets), len(prompts), len(downstream)), np.float64)
    with torch.no_grad():
        for b in range(len(sets)):
            for p in range(len(prompts)):
                h = out.captured[down_layer][b][p][masks[p].cpu()]
                acts[b, p] = encode(sae_down, h).float().mean(0)[downstream].cpu().numpy()
    delta = (acts[0][None] - acts[1:]).mean(1)  # [U + C, D]
    weight = delta[: len(upstream)].astype(np.float32)
    control_weight = delta[len(upstream) :].astype(np.float32)
    up_score = (out.scores[0][None] - out.scores[1 : len(upstream) + 1]).mean(1).astype(np.float32)
    down_scores = ev_down.scores_of_sets([[d] for d in downstream])
    down_score = (ev_down.baseline[None] - down_scores).mean(1).astype(np.float32)

    estimate = gradient_edges(ev_up, sae_down, down_layer, upstream, downstream, masks, config.batch_size, progress)
    biggest = float(np.abs(weight).max()) if weight.size else 0.0
    threshold = float(config.threshold) if config.threshold is not None else config.relative_threshold * biggest
    floor = float(np.percentile(np.abs(control_weight), 95)) if control_weight.size else math.nan
    kept = (np.abs(weight) >= threshold) & (np.abs(weight) > 0)
    if not math.isnan(floor):
        kept &= np.abs(weight) > floor
    signs = np.sign(weight[kept]) == np.sign(estimate[kept])
    up_act = np.stack([ev_up.codes[p][masks[p]].float().mean(0)[upstream].detach().cpu().numpy() for p in range(len(prompts))]).mean(0)
    result = GraphResult(
        upstream_layer=up_layer, downstream_layer=down_layer, upstream=np.array(upstream, np.int64), downstream=np.array(downstream, np.int64),
        weight=weight, estimate=estimate.astype(np.float32), kept=kept, upstream_score=up_score,
        upstream_score_estimate=attr_up[upstream].astype(np.float32), downstream_score=down_score,
        downstream_score_estimate=attr_down[downstream].astype(np.float32), upstream_activation=up_act.astype(np.float32),
        downstream_activation=acts[0].mean(0).astype(np.float32), control_latents=controls, control_weight=control_weight,
        prompts=np.array(prompts, np.int64), threshold=threshold, control_floor=floor,
        spearman=spearman(weight, estimate), sign_agreement=float(signs.mean()) if signs.size else math.nan,
        score_spearman=spearman(np.concatenate([up_score, down_score]), np.concatenate([attr_up[upstream], attr_down[downstream]])),
        baseline_score=float(ev_up.baseline.mean()),
    )
    summary = {
        "upstream_layer": up_layer, "downstream_layer": down_layer, "prompts": len(prompts), "n_upstream": len(upstream),
        "n_downstream": len(downstream), "n_edges": result.n_edges, "n_pairs": int(weight.size), "threshold": threshold,
        "control_floor": floor, "spearman": result.spearman, "sign_agreement": result.sign_agreement,
        "score_spearman": result.score_spearman, "edges": result.edges()[:12],
        "forwards": ev_up.n_forwards + ev_up.n_prepare_forwards + ev_down.n_forwards + ev_down.n_prepare_forwards,
    }
    return result, summary


def format_tree(result: GraphResult, *, max_edges: int = 6) -> list[str]:
    """The graph as an indented tree: each upstream latent with its score effect, its kept
    edges (weight, gradient estimate), each downstream latent with its own score effect."""
    lines = [f"refusal score (mean {result.baseline_score:+.2f} on {len(result.prompts)} refused harmful prompts)"]
    order = np.argsort(-np.abs(result.upstream_score), kind="stable")
    down_index = {int(d): j for j, d in enumerate(result.downstream)}
    for i in order:
        u = int(result.upstream[i])
        lines.append(
            f"  L{result.upstream_layer}#{u}  ablating it: score drop {result.upstream_score[i]:+.3f} "
            f"(est. {result.upstream_score_estimate[i]:+.3f})"
        )
        row = [(int(result.downstream[j]), float(result.weight[i, j]), float(result.estimate[i, j])) for j in np.nonzero(result.kept[i])[0]]
        row.sort(key=lambda edge: -abs(edge[1]))
        if not row:
            lines.append("      no edge above the threshold and the control floor")
        for d, w, e in row[:max_edges]:
            j = down_index[d]
            kind = "excites" if w > 0 else "inhibits"
            lines.append(
                f"    └ {kind} L{result.downstream_layer}#{d}  weight {w:+.3f} (est. {e:+.3f}); "
                f"ablating L{result.downstream_layer}#{d}: score drop {result.downstream_score[j]:+.3f}"
            )
        if len(row) > max_edges:
            lines.append(f"      … {len(row) - max_edges} more")
    return lines


def config_dict(config: GraphConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)

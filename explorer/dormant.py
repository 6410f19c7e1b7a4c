"""Stage 3c: dormant / redundant latents that wake up when the minimal set is ablated (hydra effect).

For every greedy set that flips its prompt (source layer L, latents S):

1. Layers 0..L run once (``AblationEvaluator``); then one batched forward from L of two rows,
   untouched and with S ablated (``decode(codes without S) + error``, the same splice as
   ``sae_edits``), captures the residual at every later layer with an SAE by hooks. The layer-L
   residual of each row and the captures are re-encoded with their layer's SAE.
2. A latent is *woken* at a layer if its largest activation over the prompt's tokens is at
   most ``baseline_max`` in row 0 and above ``min_activation`` in row 1 (at L, S itself is
   excluded). At most ``max_per_layer`` per layer are kept, the most active first.
3. Each woken latent is ablated as well, at its own layer, on top of S (one row per latent,
   batched, forwards from L; later-layer ablations via ``sae_edits`` hooks on their blocks):
   ``refusal_effect`` = score(S + it) − score(S). It *restores refusal* (is a redundant
   refusal latent) if that is below −``restore_threshold``: with S gone it pushes the score
   back up, and removing it too makes the prompt comply further. One more row ablates all the
   restoring ones together with S (the summary's "hydra" check).

Rows of the result are (prompt, layer, latent); the positions and token strings where the
latent fires in the ablated forward are kept (often BOS or chat-template tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.forward import refusal_log_odds
from cache.interventions import RowMaskEdit, sae_edits
from cache.sae import encode
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.experiments import MinimalSet, flipping_sets
from explorer.live import LiveContext
from explorer.results import DormantResult, GreedyResult
from store import Study
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class DormantConfig:
    layers: tuple[int, ...] | None = None
    """Layers to re-encode (None = the source layer and every later layer with an SAE)."""
    baseline_max: float = 0.0
    """A latent counts as dormant on a prompt if its max activation there is ≤ this at baseline."""
    min_activation: float = 0.0
    """… and it is woken if its max activation exceeds this with the minimal set ablated."""
    max_per_layer: int = 32
    """Woken latents tested per prompt and layer (the most active first)."""
    restore_threshold: float = 0.05
    """It restores refusal if ablating it as well lowers the score by more than this (log-odds)."""
    prompts: tuple[int, ...] | None = None
    """Only the greedy sets of these prompts (None = every set that flips)."""
    max_sets: int = 8
    """At most this many greedy sets (the first ones)."""
    include_joint: bool = False
    """Also analyse a joint greedy set (ablated on each of its prompts in turn)."""
    max_batch: int = 16
    """Rows per forward when testing woken latents."""

    def __post_init__(self) -> None:
        if self.max_per_layer < 1 or self.max_sets < 1 or self.max_batch < 1:
            raise InputError("--max-per-layer, --max-sets and --max-batch must be ≥ 1")
        if self.baseline_max < 0 or self.min_activation < 0 or self.restore_threshold < 0:
            raise InputError("--baseline-max, --min-activation and --restore-threshold must be ≥ 0")


@dataclass
class _Rows:
    """Accumulates result rows."""

    prompt: list[int] = field(default_factory=list)
    layer: list[int] = field(default_factory=list)
    latent: list[int] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    ablated: list[float] = field(default_factory=list)
    effect: list[float] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)


def dormant_layers(study: Study, live: LiveContext, source: int, config: DormantConfig) -> list[int]:
    """The source layer and the later layers with an SAE (or the configured ones, checked)."""
    if config.layers is None:
        layers = sorted({source, *(int(layer) for layer in study.meta.saes if int(layer) > source)})
    else:
        layers = sorted({int(layer) for layer in config.layers})
        early = [layer for layer in layers if layer < source]
        if early:
            raise InputError(f"layer {early[0]} comes before the source layer {source}; dormant latents are searched at or after it")
    too_late = [layer for layer in layers if layer >= live.n_layers]
    if too_late:
        raise InputError(f"layer {too_late[0]} is out of range: the model has {live.n_layers} layers")
    for layer in layers:
        live.sae(layer)  # one-line error if its SAE is not loaded
    return layers


def _prompt_evaluator(live: LiveContext, ids: list[int], source: int, max_batch: int) -> AblationEvaluator:
    """Runs layers 0..L of the prompt once; every forward below starts from layer L."""
    return AblationEvaluator.from_live(live, [ids], EvaluatorConfig(layer=source, max_batch=max_batch))


@torch.no_grad()
def _baseline_and_ablated(
    ev: AblationEvaluator, live: LiveContext, latents: Sequence[int], layers: Sequence[int],
) -> tuple[np.ndarray, dict[int, torch.Tensor]]:
    """Scores [2] (untouched, S ablated) and per layer the re-encoded codes [2, len, d_sae]."""
    masks = ev.masks_of_sets([[], list(latents)])  # [2, d_sae]
    later = [layer for layer in layers if layer > ev.layer]
    out = ev.run(masks, capture=later)  # one forward from L, capturing the later layers by hooks
    codes = {}
    if ev.layer in layers:  # at L: the clean codes, and the edited residual re-encoded
        codes[ev.layer] = torch.stack([ev.codes[0], encode(ev.sae, ev.edited_resid(0, masks[1:])[0])])
    for layer in later:
        codes[layer] = encode(live.sae(layer), torch.stack([out.captured[layer][0][0], out.captured[layer][1][0]]))
    return out.scores[:, 0], codes


@torch.no_grad()
def _extra_ablation_scores(
    ev: AblationEvaluator, live: LiveContext, latents: Sequence[int], extra: Sequence[Sequence[tuple[int, int]]],
) -> np.ndarray:
    """Scores [len(extra)]: row r has S and every (layer, latent) of ``extra[r]`` ablated.

    S and the extra latents at L edit the layer-L residual the forward starts from; those at
    later layers are ablated by ``sae_edits`` hooks on their blocks during that forward."""
    out = np.zeros(len(extra), np.float32)
    step = ev.config.max_batch
    for start in range(0, len(extra), step):
        chunk = extra[start : start + step]
        at_source = ev.masks_of_sets([[*latents, *(j for layer, j in row if layer == ev.layer)] for row in chunk])
        later: dict[int, torch.Tensor] = {}
        for r, row in enumerate(chunk):
            for layer, latent in row:
                if layer != ev.layer:
                    if layer not in later:
                        later[layer] = torch.zeros(len(chunk), int(live.sae(layer).cfg.d_sae), dtype=torch.bool)
                    later[layer][r, latent] = True
        resid = ev.edited_resid(0, at_source)  # [rows, len, d_model]
        edits = [RowMaskEdit(layer=layer, mask=mask) for layer, mask in later.items()]
        with sae_edits(live.model, {layer: live.sae(layer) for layer in later}, edits):
            logits, _ = ev.forward_from([0] * len(chunk), list(resid))
        out[start : start + len(chunk)] = refusal_log_odds(logits, live.refusal_ids).float().cpu().numpy()
    return out


def run_dormant(
    study: Study, live: LiveContext, greedy: GreedyResult, config: DormantConfig, *, progress: bool = True,
) -> tuple[DormantResult, dict[str, Any]]:
    """Find the woken latents of every chosen greedy set and test which restore refusal."""
    source = int(greedy.layer)
    sets = flipping_sets(greedy, include_joint=config.include_joint)
    if config.prompts is not None:
        wanted = {int(p) for p in config.prompts}
        sets = [s for s in sets if wanted & set(s.prompts)]
    sets = sets[: config.max_sets]
    if not sets:
        raise InputError("no greedy set flips its prompt (or none of --prompts has one); run `refusal-explorer analyze greedy` first")
    layers = dormant_layers(study, live, source, config)
    jobs = [(s, p) for s in sets for p in s.prompts]
    rows, per_prompt = _Rows(), []
    for minimal, prompt in tqdm(jobs, desc="dormant latents", unit="prompt", disable=not progress):
        per_prompt.append(_one_prompt(study, live, source, minimal, prompt, layers, config, rows))
    restores = np.array(rows.effect, np.float32) < -config.restore_threshold
    counts = np.array([len(p) for p in rows.positions], np.int64)
    result = DormantResult(
        source_layer=source, latent=np.array(rows.latent, np.int64), layer=np.array(rows.layer, np.int64),
        baseline_activation=np.array(rows.base, np.float32), ablated_activation=np.array(rows.ablated, np.float32),
        refusal_effect=np.array(rows.effect, np.float32), restores_refusal=restores,
        position_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        position=np.concatenate(rows.positions).astype(np.int64) if rows.positions else np.zeros(0, np.int64),
        position_token=np.array([t for tokens in rows.tokens for t in tokens], dtype=object),
        prompt=np.array(rows.prompt, np.int64),
    )
    return result, _summary(result, layers, per_prompt)


def _one_prompt(
    study: Study, live: LiveContext, source: int, minimal: MinimalSet, prompt: int, layers: list[int], config: DormantConfig,
    rows: _Rows,
) -> dict[str, Any]:
    ids = study.token_ids(prompt).astype(int).tolist()
    d_source = int(live.sae(source).cfg.d_sae)
    if minimal.latents and max(minimal.latents) >= d_source:
        raise InputError(f"latent {max(minimal.latents)} is out of range: the SAE at layer {source} has {d_source} latents")
    ev = _prompt_evaluator(live, ids, source, config.max_batch)
    scores, codes = _baseline_and_ablated(ev, live, minimal.latents, layers)
    tokens = study.token_strings(np.asarray(ids))
    found: list[tuple[int, int, float, float, np.ndarray]] = []
    for layer in layers:
        base, abl = codes[layer][0], codes[layer][1]  # [len, d_sae]
        base_max, abl_max = base.max(0).values, abl.max(0).values  # [d_sae]
        woken = (base_max <= config.baseline_max) & (abl_max > config.min_activation)
        if layer == source:
            woken[list(minimal.latents)] = False
        picked = woken.nonzero().flatten()
        picked = picked[torch.argsort(-abl_max[picked], stable=True)][: config.max_per_layer]
        for latent in picked.tolist():
            where = (abl[:, latent] > config.min_activation).nonzero().flatten().cpu().numpy()
            found.append((layer, latent, float(base_max[latent]), float(abl_max[latent]), where))
    extra = [(layer, latent) for layer, latent, *_ in found]
    rows_extra = [[pair] for pair in extra] if extra else []
    with_extra = _extra_ablation_scores(ev, live, minimal.latents, rows_extra) if extra else np.zeros(0, np.float32)
    effects = with_extra - scores[1]
    restoring = [extra[i] for i in np.flatnonzero(effects < -config.restore_threshold)]
    # the hydra check: every restoring latent ablated together with S
    hydra = float(_extra_ablation_scores(ev, live, minimal.latents, [restoring])[0]) if restoring else float("nan")
    for (layer, latent, base_value, abl_value, where), effect in zip(found, effects):
        rows.prompt.append(prompt)
        rows.layer.append(layer)
        rows.latent.append(latent)
        rows.base.append(base_value)
        rows.ablated.append(abl_value)
        rows.effect.append(float(effect))
        rows.positions.append(where)
        rows.tokens.append([tokens[i] for i in where.tolist()])
    return {
        "prompt": prompt, "set_size": len(minimal.latents), "baseline": float(scores[0]), "ablated": float(scores[1]),
        "woken": len(found), "restoring": len(restoring), "all_restoring_ablated": hydra,
    }


def _summary(result: DormantResult, layers: list[int], per_prompt: list[dict[str, Any]]) -> dict[str, Any]:
    by_layer = {
        layer: (int((result.layer == layer).sum()), int(((result.layer == layer) & result.restores_refusal).sum())) for layer in layers
    }
    restoring = np.flatnonzero(result.restores_refusal)
    first_tokens: dict[str, int] = {}
    for i in restoring:
        s = slice(result.position_offsets[i], result.position_offsets[i + 1])
        for token in set(result.position_token[s].tolist()):
            first_tokens[token] = first_tokens.get(token, 0) + 1
    strongest = restoring[np.argsort(result.refusal_effect[restoring], kind="stable")][:8]
    return {
        "layers": layers, "by_layer": by_layer, "prompts": per_prompt, "n_rows": int(len(result.latent)),
        "n_restoring": int(len(restoring)),
        "strongest": [(int(result.prompt[i]), int(result.layer[i]), int(result.latent[i]), float(result.refusal_effect[i])) for i in strongest],
        "tokens": sorted(first_tokens.items(), key=lambda item: -item[1])[:8],
    }

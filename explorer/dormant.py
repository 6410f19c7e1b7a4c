"""Stage 3c: dormant backups and redundant latents, each tested causally (the hydra effect).

Contexts. For every prompt of the chosen greedy sets, the source ablations ("contexts") are:

* ``set s``: each greedy set that flips its prompt (the joint set too: ``joint``), ablated at
  its layer L (``decode(codes without S) + error``);
* ``set s − i``: the same set without one of its latents (a set that does *not* flip, measured);
* ``direction``: the study's refusal direction projected out at every layer (Arditi et al.),
  when ``analyze direction`` has run.

Woken latents. In each context the residual at L and at every later layer with an SAE is
re-encoded; a latent is *woken* there if its largest activation over the prompt's tokens is at
most ``baseline_max`` untouched and above ``min_activation`` in the context (at L the context's
own latents excluded); at most ``max_per_layer`` per layer, the most active first.

Causal tests, each a measured refusal score f (fast log-odds):

* suppress: the woken latent is removed as well, at its layer and where it woke (at a later
  layer by an SAE splice in the context's forward; at L by subtracting its re-encoded
  activation × decoder row from the context's edited residual): ``effect = f(ctx + j) − f(ctx)``;
* clamp: on the untouched model, the latent is set to its woken activation at the positions
  where it woke: ``clamp_effect = f(clamp j) − f(∅)``.

Verdicts per row. In a context that flips (score below the study's threshold), a woken latent
is a **dormant backup** if suppressing it deepens the flip (``effect < −restore_threshold``) or
clamping it raises the refusal score (``clamp_effect > restore_threshold``). In a context that
does not flip, it is **redundant** with that set if ablating both flips (``f(ctx + j)`` below
the threshold). Rows keep every woken latent with its numbers, so "none found" is visible as
rows that fail the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.directions import direction_ablation
from cache.forward import refusal_log_odds
from cache.hooks import capture_resid
from cache.interventions import LatentEdit, RowMaskEdit, sae_edits
from cache.sae import decoder_rows, encode
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.experiments import MinimalSet, flipping_sets
from explorer.live import LiveContext
from explorer.results import DirectionResult, DormantResult, GreedyResult
from store import Study
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class DormantConfig:
    layers: tuple[int, ...] | None = None
    """Layers to re-encode (None = the source layer and every later layer with an SAE)."""
    baseline_max: float = 0.0
    """A latent counts as dormant on a prompt if its max activation there is ≤ this at baseline."""
    min_activation: float = 0.0
    """… and it is woken if its max activation exceeds this in a context."""
    max_per_layer: int = 32
    """Woken latents tested per context, prompt and layer (the most active first)."""
    restore_threshold: float = 0.05
    """Score change (log-odds) that counts: suppressing a backup lowers, clamping it raises the score by more."""
    prompts: tuple[int, ...] | None = None
    """Only the greedy sets of these prompts (None = every set that flips)."""
    max_sets: int = 8
    """At most this many single-prompt greedy sets (the first ones); the joint set comes on top."""
    include_joint: bool = True
    """Also the joint greedy set (ablated on each of its prompts in turn)."""
    subsets: bool = True
    """Also each set without one latent (sets that do not flip), for redundancy."""
    direction: bool = True
    """Also the refusal direction ablated at every layer (needs `analyze direction`)."""
    max_batch: int = 16
    """Rows per forward when testing woken latents."""

    def __post_init__(self) -> None:
        if self.max_per_layer < 1 or self.max_sets < 1 or self.max_batch < 1:
            raise InputError("--max-per-layer, --max-sets and --max-batch must be ≥ 1")
        if self.baseline_max < 0 or self.min_activation < 0 or self.restore_threshold < 0:
            raise InputError("--baseline-max, --min-activation and --restore-threshold must be ≥ 0")


@dataclass
class _Context:
    label: str
    latents: tuple[int, ...]  # ablated at L (empty for the direction)
    direction: bool = False
    score: float = float("nan")
    codes: dict[int, torch.Tensor] = field(default_factory=dict)  # layer → [len, d_sae]


@dataclass
class _Woken:
    context: int
    layer: int
    latent: int
    base: float
    woken: float
    where: np.ndarray  # token positions where it fires in the context
    values: np.ndarray  # its activation there


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


def _label(greedy: GreedyResult, minimal: MinimalSet) -> str:
    return "joint" if len(minimal.prompts) > 1 or (len(greedy.joint_prompts) and minimal.index == len(greedy.prompt) - 1) else f"set {minimal.index}"


def _contexts(greedy: GreedyResult, sets: list[MinimalSet], prompt: int, config: DormantConfig, direction: bool) -> list[_Context]:
    out = []
    for minimal in sets:
        if prompt not in minimal.prompts:
            continue
        label = _label(greedy, minimal)
        out.append(_Context(label, minimal.latents))
        if config.subsets and len(minimal.latents) > 1:
            out.extend(_Context(f"{label} − {i}", tuple(j for j in minimal.latents if j != i)) for i in minimal.latents)
    if direction:
        out.append(_Context("direction", (), direction=True))
    return out


def _scores(logits: torch.Tensor, live: LiveContext) -> np.ndarray:
    return refusal_log_odds(logits, live.refusal_ids).float().cpu().numpy()


@torch.no_grad()
def _full_forward(live: LiveContext, ids: list[int], rows: int, *, direction: torch.Tensor | None = None,
                  saes: dict | None = None, edits: Sequence = (), capture: Sequence[int] = ()) -> tuple[np.ndarray, dict[int, torch.Tensor]]:
    """Scores [rows] of ``rows`` copies of the prompt (direction ablated, SAE edits), and the
    residuals [rows, len, d_model] at ``capture``."""
    x = torch.tensor([ids] * rows, device=live.device)
    with torch.no_grad():
        ablation = direction_ablation(live.model, direction) if direction is not None else _nothing()
        with ablation, sae_edits(live.model, saes or {}, list(edits)), capture_resid(live.model, capture) as captured:
            logits = live.model(x, use_cache=False).logits[:, -1]
    return _scores(logits, live), {layer: captured[layer][0] for layer in capture}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


@torch.no_grad()
def _context_codes(ev: AblationEvaluator, live: LiveContext, ids: list[int], contexts: list[_Context], layers: list[int],
                   direction: torch.Tensor | None) -> dict[int, torch.Tensor]:
    """Fill each context's score and codes; returns the baseline codes per layer."""
    later = [layer for layer in layers if layer > ev.layer]
    sets = [c for c in contexts if not c.direction]
    out = ev.run(ev.masks_of_sets([[], *(c.latents for c in sets)]), capture=later)
    base = {layer: encode(live.sae(layer), out.captured[layer][0][0]) for layer in later}
    if ev.layer in layers:
        base[ev.layer] = ev.codes[0]
    masks = ev.masks_of_sets([c.latents for c in sets]) if sets else None
    for r, context in enumerate(sets):
        context.score = float(out.scores[r + 1, 0])
        if ev.layer in layers:
            context.codes[ev.layer] = encode(ev.sae, ev.edited_resid(0, masks[r : r + 1])[0])
        for layer in later:
            context.codes[layer] = encode(live.sae(layer), out.captured[layer][r + 1][0])
    for context in contexts:
        if context.direction:
            scores, captured = _full_forward(live, ids, 1, direction=direction, capture=layers)
            context.score = float(scores[0])
            context.codes = {layer: encode(live.sae(layer), captured[layer][0]) for layer in layers}
    return base


def _woken(contexts: list[_Context], base: dict[int, torch.Tensor], layers: list[int], source: int, config: DormantConfig) -> list[_Woken]:
    found = []
    for c, context in enumerate(contexts):
        for layer in layers:
            base_max, codes = base[layer].max(0).values, context.codes[layer]
            ctx_max = codes.max(0).values
            woken = (base_max <= config.baseline_max) & (ctx_max > config.min_activation)
            if layer == source and context.latents:
                woken[list(context.latents)] = False
            picked = woken.nonzero().flatten()
            picked = picked[torch.argsort(-ctx_max[picked], stable=True)][: config.max_per_layer]
            for latent in picked.tolist():
                column = codes[:, latent]
                where = (column > config.min_activation).nonzero().flatten()
                found.append(_Woken(c, layer, latent, float(base_max[latent]), float(ctx_max[latent]),
                                    where.cpu().numpy(), column[where].float().cpu().numpy()))
    return found


@torch.no_grad()
def _suppressed_set_scores(ev: AblationEvaluator, live: LiveContext, rows: list[tuple[_Context, _Woken]]) -> np.ndarray:
    """f(ctx + j) for set contexts, from layer L: at L the re-encoded activation is subtracted,
    at later layers an SAE splice ablates j where it fires."""
    out = np.zeros(len(rows), np.float32)
    w_dec = decoder_rows(ev.sae)
    for start in range(0, len(rows), ev.config.max_batch):
        chunk = rows[start : start + ev.config.max_batch]
        resid = ev.edited_resid(0, ev.masks_of_sets([c.latents for c, _ in chunk]))  # [b, len, d_model]
        later: dict[int, torch.Tensor] = {}
        for r, (context, w) in enumerate(chunk):
            if w.layer == ev.layer:
                activation = context.codes[w.layer][:, w.latent].to(resid.dtype)  # [len]
                resid[r] = resid[r] - activation[:, None] * w_dec[w.latent].to(resid.dtype)[None, :]
            else:
                mask = later.setdefault(w.layer, torch.zeros(len(chunk), int(live.sae(w.layer).cfg.d_sae), dtype=torch.bool))
                mask[r, w.latent] = True
        edits = [RowMaskEdit(layer=layer, mask=mask) for layer, mask in later.items()]
        with sae_edits(live.model, {layer: live.sae(layer) for layer in later}, edits):
            logits, _ = ev.forward_from([0] * len(chunk), list(resid))
        out[start : start + len(chunk)] = _scores(logits, live)
    return out


def _suppressed_direction_scores(live: LiveContext, ids: list[int], direction: torch.Tensor, woken: list[_Woken], step: int) -> np.ndarray:
    """f(direction + j): direction ablated everywhere, j ablated by an SAE splice at its layer."""
    out = np.zeros(len(woken), np.float32)
    for start in range(0, len(woken), step):
        chunk = woken[start : start + step]
        masks: dict[int, torch.Tensor] = {}
        for r, w in enumerate(chunk):
            masks.setdefault(w.layer, torch.zeros(len(chunk), int(live.sae(w.layer).cfg.d_sae), dtype=torch.bool))[r, w.latent] = True
        edits = [RowMaskEdit(layer=layer, mask=mask) for layer, mask in masks.items()]
        out[start : start + len(chunk)], _ = _full_forward(
            live, ids, len(chunk), direction=direction, saes={layer: live.sae(layer) for layer in masks}, edits=edits,
        )
    return out


def _clamp_scores(live: LiveContext, ids: list[int], woken: list[_Woken], step: int) -> np.ndarray:
    """f(clamp j) on the untouched prompt: j set to its woken activation where it woke."""
    out = np.zeros(len(woken), np.float32)
    for start in range(0, len(woken), step):
        chunk = woken[start : start + step]
        edits = [
            LatentEdit(layer=w.layer, latents=(w.latent,), mode="clamp", value=float(v), positions=(int(p),), rows=(r,))
            for r, w in enumerate(chunk) for p, v in zip(w.where, w.values)
        ]
        layers = sorted({w.layer for w in chunk})
        out[start : start + len(chunk)], _ = _full_forward(live, ids, len(chunk), saes={layer: live.sae(layer) for layer in layers}, edits=edits)
    return out


@dataclass
class _Rows:
    columns: dict[str, list] = field(default_factory=dict)

    def add(self, **values: Any) -> None:
        for key, value in values.items():
            self.columns.setdefault(key, []).append(value)

    def get(self, key: str, dtype: Any) -> np.ndarray:
        return np.array(self.columns.get(key, []), dtype=dtype)


def _direction(study: Study, run: str, config: DormantConfig) -> torch.Tensor | None:
    if not config.direction:
        return None
    result = DirectionResult.load(study, run)
    return None if result is None else torch.as_tensor(np.asarray(result.direction, np.float32))


def run_dormant(
    study: Study, live: LiveContext, greedy: GreedyResult, config: DormantConfig, *, progress: bool = True, run: str = "default",
) -> tuple[DormantResult, dict[str, Any]]:
    """Find the woken latents of every context and test which are backups or redundant."""
    source = int(greedy.layer)
    sets = flipping_sets(greedy, include_joint=config.include_joint)
    if config.prompts is not None:
        wanted = {int(p) for p in config.prompts}
        sets = [s for s in sets if wanted & set(s.prompts)]
    single = [s for s in sets if len(s.prompts) == 1 and _label(greedy, s) != "joint"]
    sets = single[: config.max_sets] + [s for s in sets if s not in single]
    if not sets:
        raise InputError("no greedy set flips its prompt (or none of --prompts has one); run `refusal-explorer analyze greedy` first")
    layers = dormant_layers(study, live, source, config)
    direction = _direction(study, run, config)
    prompts = list(dict.fromkeys(p for s in sets for p in s.prompts))
    threshold = float(greedy.threshold)
    rows, per_context = _Rows(), _Rows()
    for prompt in tqdm(prompts, desc="dormant latents", unit="prompt", disable=not progress):
        _one_prompt(study, live, greedy, sets, prompt, layers, config, direction, threshold, rows, per_context)
    counts = np.array([len(p) for p in rows.columns.get("where", [])], np.int64)
    result = DormantResult(
        source_layer=source, latent=rows.get("latent", np.int64), layer=rows.get("layer", np.int64),
        baseline_activation=rows.get("base", np.float32), ablated_activation=rows.get("woken", np.float32),
        refusal_effect=rows.get("effect", np.float32), restores_refusal=rows.get("deepens", bool),
        position_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        position=np.concatenate(rows.columns["where"]).astype(np.int64) if counts.size else np.zeros(0, np.int64),
        position_token=np.array([t for tokens in rows.columns.get("tokens", []) for t in tokens], dtype=object),
        prompt=rows.get("prompt", np.int64), context=rows.get("context", object), context_score=rows.get("context_score", np.float32),
        context_flips=rows.get("context_flips", bool), with_latent_score=rows.get("with_latent", np.float32),
        clamp_effect=rows.get("clamp_effect", np.float32), raises_refusal=rows.get("raises", bool),
        backup=rows.get("backup", bool), redundant=rows.get("redundant", bool), threshold=threshold,
        effect_threshold=float(config.restore_threshold),
        context_prompt=per_context.get("prompt", np.int64), context_label=per_context.get("label", object),
        context_baseline=per_context.get("baseline", np.float32), context_ablated=per_context.get("score", np.float32),
        context_woken=per_context.get("woken", np.int64),
    )
    return result, dormant_summary(result, layers, direction is not None)


def _one_prompt(
    study: Study, live: LiveContext, greedy: GreedyResult, sets: list[MinimalSet], prompt: int, layers: list[int],
    config: DormantConfig, direction: torch.Tensor | None, threshold: float, rows: _Rows, per_context: _Rows,
) -> None:
    ids = study.token_ids(prompt).astype(int).tolist()
    source = int(greedy.layer)
    d_source = int(live.sae(source).cfg.d_sae)
    biggest = max((max(s.latents) for s in sets if s.latents), default=-1)
    if biggest >= d_source:
        raise InputError(f"latent {biggest} is out of range: the SAE at layer {source} has {d_source} latents")
    ev = AblationEvaluator.from_live(live, [ids], EvaluatorConfig(layer=source, max_batch=config.max_batch))
    contexts = _contexts(greedy, sets, prompt, config, direction is not None)
    base = _context_codes(ev, live, ids, contexts, layers, direction)
    baseline = float(ev.baseline[0])
    woken = _woken(contexts, base, layers, source, config)
    set_rows = [(contexts[w.context], w) for w in woken if not contexts[w.context].direction]
    with_latent = dict(zip((id(w) for _, w in set_rows), _suppressed_set_scores(ev, live, set_rows))) if set_rows else {}
    direction_rows = [w for w in woken if contexts[w.context].direction]
    if direction_rows:
        with_latent.update(zip((id(w) for w in direction_rows), _suppressed_direction_scores(live, ids, direction, direction_rows, config.max_batch)))
    to_clamp = [w for w in woken if contexts[w.context].score < threshold]
    clamped = dict(zip((id(w) for w in to_clamp), _clamp_scores(live, ids, to_clamp, config.max_batch))) if to_clamp else {}
    tokens = study.token_strings(np.asarray(ids))
    for context in contexts:
        per_context.add(prompt=prompt, label=context.label, baseline=baseline, score=context.score,
                        woken=sum(contexts[w.context] is context for w in woken))
    for w in woken:
        context = contexts[w.context]
        flips = context.score < threshold
        score = float(with_latent[id(w)])
        effect = score - context.score
        clamp = float(clamped[id(w)]) - baseline if id(w) in clamped else float("nan")
        deepens = flips and effect < -config.restore_threshold
        raises = flips and clamp > config.restore_threshold
        rows.add(
            prompt=prompt, context=context.label, context_score=context.score, context_flips=flips, layer=w.layer, latent=w.latent,
            base=w.base, woken=w.woken, with_latent=score, effect=effect, clamp_effect=clamp, deepens=deepens, raises=raises,
            backup=deepens or raises, redundant=(not flips) and score < threshold, where=w.where,
            tokens=[tokens[i] for i in w.where.tolist()],
        )


def dormant_summary(result: DormantResult, layers: list[int], had_direction: bool) -> dict[str, Any]:
    """Counts and per-prompt evidence for the CLI (and ``--json``)."""
    backups = {(int(p), int(layer), int(j)) for p, layer, j, b in zip(result.prompt, result.layer, result.latent, result.backup) if b}
    redundant = [(int(p), str(c), int(layer), int(j)) for p, c, layer, j, r in zip(result.prompt, result.context, result.layer, result.latent, result.redundant) if r]
    by_prompt = []
    for prompt in dict.fromkeys(result.context_prompt.tolist()):
        here = result.prompt == prompt
        contexts = [
            {"context": str(label), "score": float(score), "flips": bool(score < result.threshold), "woken": int(n)}
            for p, label, score, n in zip(result.context_prompt, result.context_label, result.context_ablated, result.context_woken) if p == prompt
        ]
        evidence = [
            {"context": str(result.context[i]), "layer": int(result.layer[i]), "latent": int(result.latent[i]),
             "woken": float(result.ablated_activation[i]), "suppress_effect": float(result.refusal_effect[i]),
             "clamp_effect": None if np.isnan(result.clamp_effect[i]) else float(result.clamp_effect[i]),
             "with_latent_score": float(result.with_latent_score[i]),
             "kind": "backup" if result.backup[i] else "redundant"}
            for i in np.flatnonzero(here & (result.backup | result.redundant))
        ]
        by_prompt.append({
            "prompt": int(prompt), "baseline": float(result.context_baseline[result.context_prompt == prompt][0]),
            "contexts": contexts, "woken": int(here.sum()), "backups": int((here & result.backup).sum()),
            "redundant": int((here & result.redundant).sum()), "evidence": evidence,
        })
    return {
        "layers": layers, "threshold": float(result.threshold), "effect_threshold": float(result.effect_threshold),
        "direction_searched": had_direction, "n_rows": int(len(result.latent)),
        "n_contexts": int(len(result.context_label)), "n_backups": len(backups), "n_redundant": len(redundant),
        "backups": sorted(backups), "redundant": redundant, "prompts": by_prompt,
    }


def dormant_summary_lines(summary: dict[str, Any], source_layer: int) -> list[str]:
    """The CLI's text: one block per prompt, the counts, and "none found" when so."""
    lines = [
        f"dormant    contexts: flipping sets, each set less one latent, {'the direction' if summary['direction_searched'] else 'no direction (run analyze direction)'}; "
        f"ablated at layer {source_layer}, re-encoded at layers {summary['layers']}",
        f"tests      backup: woken in a flipping context and suppressing it lowers the score by > {summary['effect_threshold']:g} "
        f"or clamping it on the untouched prompt raises it by more; redundant: woken in a set that does not flip and "
        f"ablating both goes below {summary['threshold']:+.2f}",
    ]
    for info in summary["prompts"]:
        flips = sum(c["flips"] for c in info["contexts"])
        lines.append(
            f"prompt {info['prompt']:<4} baseline {info['baseline']:+.2f}; {len(info['contexts'])} contexts ({flips} flip); "
            f"{info['woken']} woken, {info['backups']} dormant backups, {info['redundant']} redundant"
        )
        for e in info["evidence"][:6]:
            clamp = "n/a" if e["clamp_effect"] is None else f"{e['clamp_effect']:+.2f}"
            lines.append(
                f"           {e['kind']:<9} L{e['layer']}#{e['latent']} in {e['context']}: woken {e['woken']:.2f}, "
                f"suppressed {e['suppress_effect']:+.2f} (→ {e['with_latent_score']:+.2f}), clamped {clamp}"
            )
    lines.append(
        f"found      {summary['n_backups']} dormant backups, {summary['n_redundant']} redundant (latent, set) pairs"
        if summary["n_backups"] or summary["n_redundant"] else
        f"found      none: no woken latent passed a causal test ({summary['n_rows']} tested in {summary['n_contexts']} contexts)"
    )
    return lines

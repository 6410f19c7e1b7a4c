"""`analyze jailbreak`: how wrapping harmful requests in jailbreak framings changes the refusal
score and the refusal latents, and which wrapper tokens damp those latents (Yeo et al. 2025,
who found words such as "fictional" suppressing harm latents).

Pairs: the study's refused harmful prompts (plain, their cached tokens) wrapped by each
template of ``explorer.wrappers`` (or a user's), or a user table of (plain, wrapped[, wrapper])
pairs. For every prompt, one forward gives the fast refusal score and, at the SAE layer, each
refusal latent's code averaged over the post-instruction tokens.

Per wrapper: the refusal rate (fast score above the study's threshold) with a Wilson interval,
the mean score change, and each refusal latent's mean activation change (wrapped − plain).

Per token: input × gradient of R = Σ refusal latents' codes at the post-instruction tokens with
respect to each wrapped prompt's token embeddings; the first-order estimate of how R changes
when the token's embedding is zeroed, so negative = the token damps the refusal latents. Only
wrapper tokens count: token ids that the plain prompt does not contain. Tokens are ranked by
their summed attribution over the set; the top ones are then checked by occlusion: their
embeddings zeroed in the prompts containing them, each latent and the score measured.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.forward import pad_left, refusal_log_odds
from cache.hooks import capture_resid
from cache.sae import encode
from explorer.live import LiveContext, prompt_token_ids, select_prompts
from explorer.live_features import encode_texts
from explorer.results_paper2 import JailbreakResult
from explorer.stats import wilson
from explorer.tables import pick_column, read_rows
from explorer.wrappers import Wrapper, load_wrappers, pick_wrappers
from store import Study
from store.errors import InputError


@dataclass(frozen=True, kw_only=True)
class JailbreakConfig:
    layer: int
    """The SAE layer of the refusal latents."""
    wrappers: tuple[str, ...] | None = None
    """Built-in wrappers to use (default: all of them)."""
    templates: Path | None = None
    """JSON list of {"name", "kind", "template"} replacing the built-in wrappers."""
    pairs: Path | None = None
    """Table of plain/wrapped pairs (columns plain, wrapped, optional wrapper) instead of templates."""
    max_prompts: int = 8
    """Refused harmful prompts of the study to wrap."""
    k: int = 10
    """Refusal latents followed: the top k of `analyze candidates` by --ranking."""
    ranking: Literal["integrated_gradients", "attribution", "cosine"] = "integrated_gradients"
    """How the candidates are ranked (Paper B ranks by integrated gradients)."""
    top_tokens: int = 20
    """Damping tokens stored (ranked by summed attribution)."""
    verify_tokens: int = 5
    """Top tokens checked by occlusion."""
    max_occurrences: int = 8
    """Prompts per verified token in the occlusion check."""
    batch_size: int = 8
    """Prompts per forward."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_prompts < 1 or self.top_tokens < 1 or self.verify_tokens < 0 or self.max_occurrences < 1 or self.batch_size < 1:
            raise InputError("--k, --max-prompts, --top-tokens, --max-occurrences, --batch-size must be ≥ 1 and --verify-tokens ≥ 0")
        if self.pairs is not None and (self.templates is not None or self.wrappers is not None):
            raise InputError("--pairs replaces the templates; give either --pairs or --wrappers/--templates")


@dataclass
class _Pairs:
    plain_ids: list[list[int]]
    plain_text: list[str]
    wrapped_ids: list[list[int]]
    wrapped_text: list[str]
    pair_plain: list[int]  # index into the plain lists
    pair_wrapper: list[int]  # index into names
    names: list[str]
    kinds: list[str]


def _pairs(study: Study, live: LiveContext, config: JailbreakConfig) -> _Pairs:
    if config.pairs is not None:
        rows = read_rows(config.pairs)
        plain_col = pick_column(config.pairs, rows, None, ("plain",), "plain")
        wrapped_col = pick_column(config.pairs, rows, None, ("wrapped",), "wrapped")
        wrapper_col = next((c for c in rows[0] if c.lower() == "wrapper"), None)
        plains: dict[str, int] = {}
        names: dict[str, int] = {}
        wrapped_text, pair_plain, pair_wrapper = [], [], []
        for row in rows:
            plain, wrapped = row.get(plain_col, "").strip(), row.get(wrapped_col, "").strip()
            if not plain or not wrapped:
                continue
            name = (row.get(wrapper_col, "") if wrapper_col else "").strip() or "user"
            pair_plain.append(plains.setdefault(plain, len(plains)))
            pair_wrapper.append(names.setdefault(name, len(names)))
            wrapped_text.append(wrapped)
        if not wrapped_text:
            raise InputError(f"{config.pairs}: no row has both a plain and a wrapped prompt")
        plain_text = list(plains)
        return _Pairs(encode_texts(live, plain_text), plain_text, encode_texts(live, wrapped_text), wrapped_text,
                      pair_plain, pair_wrapper, list(names), ["user"] * len(names))
    wrappers: Sequence[Wrapper] = load_wrappers(config.templates) if config.templates is not None else pick_wrappers(config.wrappers)
    prompts = select_prompts(study, label="harmful", refused=True)[: config.max_prompts]
    if not prompts:
        raise InputError("the study has no refused harmful prompts (by the fast score) to wrap")
    texts = study.column("text")
    plain_text = [str(texts[p]) for p in prompts]
    wrapped_text, pair_plain, pair_wrapper = [], [], []
    for w, wrapper in enumerate(wrappers):
        for i, text in enumerate(plain_text):
            wrapped_text.append(wrapper.wrap(text))
            pair_plain.append(i)
            pair_wrapper.append(w)
    return _Pairs(prompt_token_ids(study, prompts), plain_text, encode_texts(live, wrapped_text), wrapped_text,
                  pair_plain, pair_wrapper, [w.name for w in wrappers], [w.kind for w in wrappers])


@torch.no_grad()
def score_and_latents(
    live: LiveContext, token_ids: Sequence[Sequence[int]], layer: int, latents: Sequence[int], batch: int, *, progress: bool = False,
    zero: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fast refusal score [N] and each latent's mean code over the post-instruction tokens
    [N, k]. ``zero[i]``: token positions of prompt i whose embeddings are zeroed (occlusion)."""
    sae = live.sae(layer)
    embed = live.model.get_input_embeddings()
    scores, acts = [], []
    for start in tqdm(range(0, len(token_ids), batch), desc="scoring", unit="batch", disable=not progress):
        chunk = token_ids[start : start + batch]
        inputs = pad_left(chunk, live.pad_id, live.device)
        ids = inputs.pop("input_ids")
        embeds = embed(ids)
        if zero is not None:
            width = ids.shape[1]
            for row, positions in enumerate(zero[start : start + batch]):
                for t in positions:
                    embeds[row, width - len(chunk[row]) + t] = 0
        with capture_resid(live.model, [layer]) as captured:
            logits = live.model(inputs_embeds=embeds, **inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
        scores.append(refusal_log_odds(logits, live.refusal_ids).float().cpu().numpy())
        hidden = captured[layer][-1][:, -live.n_positions :]
        acts.append(encode(sae, hidden.to(sae.W_dec)).float().mean(1)[:, list(latents)].cpu().numpy())
    return np.concatenate(scores), np.concatenate(acts)


def token_attribution(live: LiveContext, ids: Sequence[int], layer: int, latents: Sequence[int]) -> np.ndarray:
    """Input × gradient of Σ latents' codes at the post-instruction tokens, per token [len]."""
    sae = live.sae(layer)
    embeds = live.model.get_input_embeddings()(torch.tensor([list(ids)], device=live.device)).detach().requires_grad_(True)
    with torch.enable_grad():
        with capture_resid(live.model, [layer], stop=True, detach=False) as captured:
            live.model(inputs_embeds=embeds, use_cache=False)
        codes = encode(sae, captured[layer][-1][0, -live.n_positions :].to(sae.W_dec))
        (grad,) = torch.autograd.grad(codes[:, list(latents)].sum(), embeds)
    return (grad[0] * embeds[0].detach()).sum(-1).float().cpu().numpy()


def run_jailbreak(
    study: Study, live: LiveContext, latents: Sequence[int], config: JailbreakConfig, *, progress: bool = True,
) -> tuple[JailbreakResult, dict[str, Any]]:
    latents = [int(i) for i in latents]
    if not latents:
        raise InputError("no refusal latents to follow; run `refusal-explorer analyze candidates` first")
    sae = live.sae(config.layer)
    if not all(0 <= i < int(sae.cfg.d_sae) for i in latents):
        raise InputError(f"a refusal latent is out of range: the SAE at layer {config.layer} has {sae.cfg.d_sae} latents")
    pairs = _pairs(study, live, config)
    plain_score, plain_acts = score_and_latents(live, pairs.plain_ids, config.layer, latents, config.batch_size, progress=progress)
    wrapped_score, wrapped_acts = score_and_latents(live, pairs.wrapped_ids, config.layer, latents, config.batch_size, progress=progress)

    # per-token attribution over the wrapper tokens of every wrapped prompt
    tokenizer = live.loaded.tokenizer
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    where: dict[str, list[tuple[int, list[int]]]] = defaultdict(list)  # token → (pair, positions)
    for m in tqdm(range(len(pairs.wrapped_ids)), desc="token attribution", unit="prompt", disable=not progress):
        ids = pairs.wrapped_ids[m]
        plain = set(pairs.plain_ids[pairs.pair_plain[m]])
        attribution = token_attribution(live, ids, config.layer, latents)
        positions: dict[str, list[int]] = defaultdict(list)
        for t, token_id in enumerate(ids[: len(ids) - live.n_positions]):
            if token_id in plain:
                continue
            positions[tokenizer.decode([token_id])].append(t)
        for token, at in positions.items():
            totals[token] += float(attribution[at].sum())
            counts[token] += 1
            where[token].append((m, at))
    ranked = sorted(totals, key=lambda token: totals[token])[: config.top_tokens]

    # occlusion check of the top damping tokens: zero their embeddings where they occur
    verified = [t for t in ranked if totals[t] < 0][: config.verify_tokens]
    rows = [(v, m, at) for v, token in enumerate(verified) for m, at in where[token][: config.max_occurrences]]
    latent_change = np.zeros((len(verified), len(latents)), np.float32)
    score_change = np.zeros(len(verified), np.float32)
    n_rows = np.zeros(len(verified), np.int64)
    if rows:
        occluded_score, occluded_acts = score_and_latents(
            live, [pairs.wrapped_ids[m] for _v, m, _at in rows], config.layer, latents, config.batch_size, zero=[at for _v, _m, at in rows],
        )
        for r, (v, m, _at) in enumerate(rows):
            latent_change[v] += occluded_acts[r] - wrapped_acts[m]
            score_change[v] += occluded_score[r] - wrapped_score[m]
            n_rows[v] += 1
        latent_change /= np.maximum(n_rows, 1)[:, None]
        score_change /= np.maximum(n_rows, 1)

    result = JailbreakResult(
        layer=config.layer, latents=np.array(latents, np.int64), wrappers=np.array(pairs.names, dtype=object),
        wrapper_kind=np.array(pairs.kinds, dtype=object), plain_text=np.array(pairs.plain_text, dtype=object),
        wrapped_text=np.array(pairs.wrapped_text, dtype=object), pair_plain=np.array(pairs.pair_plain, np.int64),
        pair_wrapper=np.array(pairs.pair_wrapper, np.int64), plain_score=plain_score.astype(np.float32),
        wrapped_score=wrapped_score.astype(np.float32), plain_latents=plain_acts.astype(np.float32),
        wrapped_latents=wrapped_acts.astype(np.float32), token=np.array(ranked, dtype=object),
        token_attribution=np.array([totals[t] for t in ranked], np.float32), token_count=np.array([counts[t] for t in ranked], np.int64),
        verified_token=np.array(verified, dtype=object), verified_latent_change=latent_change, verified_score_change=score_change,
        verified_rows=n_rows, threshold=float(live.refusal_threshold), source=str(config.pairs) if config.pairs else "templates",
    )
    return result, summarise(result)


def summarise(result: JailbreakResult) -> dict[str, Any]:
    threshold = result.threshold
    plain_refused = int((result.plain_score > threshold).sum())
    wrappers = []
    for w, name in enumerate(result.wrappers.tolist()):
        rows = result.pair_wrapper == w
        plain_rows = result.pair_plain[rows]
        refused = int((result.wrapped_score[rows] > threshold).sum())
        n = int(rows.sum())
        base = result.plain_latents[plain_rows].sum(1)
        change = result.wrapped_latents[rows].sum(1) - base
        per_latent = (result.wrapped_latents[rows] - result.plain_latents[plain_rows]).mean(0)
        wrappers.append({
            "wrapper": name, "kind": str(result.wrapper_kind[w]), "n": n, "refused": refused, "rate": refused / n if n else math.nan,
            "interval": list(wilson(refused, n)), "plain_refused": int((result.plain_score[plain_rows] > threshold).sum()),
            "score_change": float((result.wrapped_score[rows] - result.plain_score[plain_rows]).mean()),
            "latent_change": float(change.mean()),
            "latent_change_relative": float(change.mean() / base.mean()) if base.mean() > 0 else math.nan,
            "most_damped": int(result.latents[int(np.argmin(per_latent))]), "most_damped_change": float(per_latent.min()),
        })
    verified = []
    for v, token in enumerate(result.verified_token.tolist()):
        change = result.verified_latent_change[v]
        verified.append({
            "token": token, "rows": int(result.verified_rows[v]), "latent_change": float(change.sum()),
            "score_change": float(result.verified_score_change[v]), "confirmed": bool(change.sum() > 0),
            "most_damped": int(result.latents[int(np.argmax(change))]), "most_damped_change": float(change.max()),
        })
    return {
        "layer": result.layer, "latents": result.latents.tolist(), "source": result.source, "plain_n": len(result.plain_score),
        "plain_refused": plain_refused, "plain_interval": list(wilson(plain_refused, len(result.plain_score))),
        "wrappers": wrappers,
        "tokens": [(t, float(a), int(c)) for t, a, c in zip(result.token.tolist(), result.token_attribution, result.token_count)],
        "verified": verified,
    }


def format_summary(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"jailbreak  layer {summary['layer']}, {len(summary['latents'])} refusal latents {summary['latents']}; "
        f"{summary['plain_n']} plain prompts, wrappers from {summary['source']}",
        f"plain      refused {summary['plain_refused']}/{summary['plain_n']} "
        f"({_pct(summary['plain_refused'] / max(1, summary['plain_n']))}, 95% CI {_interval(summary['plain_interval'])})",
        f"{'wrapper':<22} {'kind':<17} {'refused':>12} {'95% CI':>13} {'Δscore':>7} {'Δlatents':>9}  most damped",
    ]
    for w in summary["wrappers"]:
        rel = w["latent_change_relative"]
        lines.append(
            f"{w['wrapper']:<22} {w['kind']:<17} {w['refused']:>3}/{w['n']:<3} {_pct(w['rate']):>4} {_interval(w['interval']):>13} "
            f"{w['score_change']:>+7.2f} {w['latent_change']:>+9.2f}"
            + (f" ({rel:+.0%})" if not math.isnan(rel) else "") + f"  #{w['most_damped']} {w['most_damped_change']:+.2f}"
        )
    damping = [(t, a, c) for t, a, c in summary["tokens"] if a < 0][:10]
    if damping:
        lines.append("damping    wrapper tokens by summed input×gradient on the refusal latents: "
                     + ", ".join(f"{t!r} {a:+.2f} (×{c})" for t, a, c in damping))
    else:
        lines.append("damping    no evidence of wrapper tokens damping the refusal latents (no negative attribution)")
    for v in summary["verified"]:
        verdict = "confirmed" if v["confirmed"] else "NOT confirmed"
        lines.append(
            f"  occlusion {v['token']!r}: zeroing it in {v['rows']} prompts changes the latents by {v['latent_change']:+.2f} "
            f"(most: #{v['most_damped']} {v['most_damped_change']:+.2f}) and the score by {v['score_change']:+.2f}: {verdict}"
        )
    return lines


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.0%}"


def _interval(bounds: Sequence[float]) -> str:
    low, high = bounds
    return "n/a" if math.isnan(low) else f"{low:.0%}–{high:.0%}"


def config_dict(config: JailbreakConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)

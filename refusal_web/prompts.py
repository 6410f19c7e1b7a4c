"""Callbacks of the prompt explorer: find a prompt, colour its tokens, compare generations.

Tokens are coloured by one latent's activation, or by the direction: the projection of the
SAE reconstruction on the refusal direction, Σ_i a_i · ‖d_i‖ · cos(d_i, r), which needs only
the stored codes, decoder norms and candidate cosines (no residuals, no model).
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from explorer.browse import PROMPT_COLUMNS, prompt_view
from explorer.browse_why import WhyView, why_view
from refusal_web.context import WebContext, page_of, whole_number
from refusal_web.render import markdown_table, show_token
from refusal_web.views import rounded
from store import InputError

COLOUR_MODES = ("latent", "direction")


def prompt_page(ctx: WebContext, query: str, label: str, page: object) -> tuple[pd.DataFrame, str, int]:
    """Prompts matching ``query`` in the shared filter language (``explorer.filters.PROMPTS``:
    any other word searches the text), one page, a status line, the page shown."""
    empty = pd.DataFrame({name: [] for name in PROMPT_COLUMNS})
    table = ctx.prompts()
    try:
        rows = table.filter(((f"label={label} " if label and label != "all" else "") + (query or "")).strip())
        number = whole_number(page or 1, "page")
    except InputError as error:
        return empty, f"⚠️ {error}", 1
    shown, number, pages = page_of(rows, number, ctx.page_size)
    columns = table.columns
    frame = pd.DataFrame({
        "prompt": shown, "label": columns["label"][shown], "refusal_score": rounded(columns["refusal_score"][shown]),
        "refused": columns["refused"][shown], "tokens": columns["tokens"][shown],
        "text": [text if len(text) <= 100 else text[:99] + "…" for text in columns["text"][shown].astype(str)],
    })
    return frame, f"{len(rows):,} of {len(table):,} prompts · page {number} of {pages}", number


def prompt_search(ctx: WebContext, query: str, label: str) -> tuple[pd.DataFrame, str, int]:
    """A new search: its first page."""
    return prompt_page(ctx, query, label, 1)


def direction_colour(ctx: WebContext, layer: int, index: int) -> np.ndarray:
    """Per token of a prompt: the SAE reconstruction's projection on the refusal direction."""
    candidates = ctx.candidates
    if candidates is None or candidates.layer != layer:
        raise InputError(f"colouring by direction needs candidate cosines for layer {layer}: "
                         f"run {ctx.command_for('candidates') or '`refusal-explorer analyze candidates`'}")
    codes = ctx.study.codes(layer)
    norms = codes.stats().get("decoder_norm")
    weight = candidates.cosine * (norms if norms is not None else 1.0)  # [d_sae]
    indptr, indices, values = codes.prompt_codes(index)
    contributions = values * weight[indices]
    sums = np.zeros(len(indptr) - 1, np.float32)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    np.add.at(sums, rows, contributions)
    return sums


def why_frame(view: WhyView) -> pd.DataFrame:
    """The prompt's ranked latents (attribution is NaN in the fallback ranking)."""
    return pd.DataFrame({
        "latent": [item.latent for item in view.ranking],
        "attribution": rounded(np.array([item.attribution for item in view.ranking], np.float64)),
        "activation": rounded(np.array([item.activation for item in view.ranking], np.float64)),
        "in_set": [item.in_set for item in view.ranking],
    })


def why_markdown(view: WhyView, searchable: bool = False) -> str:
    """Why this prompt: how its latents were ranked, its minimal set and what ablating it does,
    the direction, the dormant latents that wake, the FM partners. ``searchable``: the app can
    search a prompt now (live mode), so an unsearched prompt points to that button."""
    parts = [f"### Why prompt {view.index} · {view.label}", view.ranking_note, "**Minimal set**"]
    if view.set_latents:
        confirmed = {1: "the generation complies", 0: "the generation still refuses", -1: "generation not checked"}
        parts.append(f"Set #{view.set_index}: **[{', '.join(map(str, view.set_latents))}]**. Ablating it: refusal score "
                     f"{view.refusal_score:+.3f} → {view.set_score:+.3f}; {confirmed.get(view.set_confirmed, '?')}."
                     + (f"\n\n> {view.set_generation}" if view.set_generation else ""))
    else:
        parts.append(view.set_note)
        if searchable and "searched on this prompt yet" in view.set_note:
            parts.append("Or press **Search now** below: the set is searched with this study's greedy settings and saved.")
    parts += ["**Refusal direction**", view.direction_note, "**Dormant latents that wake**"]
    parts.append(", ".join(f"{latent} (layer {layer}: {base:.2f} → {woke:.2f})" for latent, layer, base, woke in view.dormant)
                 if view.dormant else view.dormant_note)
    parts.append("**FM partners of the top latents**")
    parts.append("; ".join(f"{a} × {b}: {value:+.3f} ({'synergy' if value > 0 else 'redundancy'})"
                           for a, b, value in view.partners) if view.partners else view.partners_note)
    return "\n\n".join(parts)


def prompt_explore(
    ctx: WebContext, index: object, layer: object, colour_by: str, latent: object,
) -> tuple[list[tuple[str, float | None]], str, str, pd.DataFrame, str]:
    """(highlighted tokens, prompt facts, generations Markdown, the prompt's latents ranked by
    attribution to its refusal, the why Markdown)."""
    empty = pd.DataFrame({"latent": [], "attribution": [], "activation": [], "in_set": []})
    try:
        prompt = whole_number(index, "prompt")
        chosen = ctx.pick_layer(layer)
        if colour_by not in COLOUR_MODES:
            raise InputError(f"colour by one of {', '.join(COLOUR_MODES)}")
        chosen_latent = whole_number(latent, "latent") if colour_by == "latent" else None
        if chosen_latent is not None and not 0 <= chosen_latent < ctx.study.codes(chosen).d_sae:
            raise InputError(f"latent {chosen_latent} is out of range (layer {chosen} has {ctx.study.codes(chosen).d_sae} latents)")
        view = prompt_view(ctx.study, prompt, chosen, chosen_latent, ctx.run)
        colour = view.colour if chosen_latent is not None else direction_colour(ctx, chosen, prompt)
        if not 0 <= prompt < ctx.study.n_prompts:
            raise InputError(f"prompt {prompt} is out of range: the study has {ctx.study.n_prompts:,} prompts")
        why = why_view(ctx.details, prompt, chosen)
    except InputError as error:
        return [], f"⚠️ {error}", "", empty, ""
    scale = float(np.abs(colour).max()) if colour is not None and len(colour) else 0.0
    highlighted = [
        (show_token(token), (round(float(value) / scale, 3) if scale > 0 and value != 0 else None))
        for token, value in zip(view.tokens, colour if colour is not None else np.zeros(len(view.tokens)))
    ]
    what = f"latent {chosen_latent}" if chosen_latent is not None else "the refusal direction (via the SAE reconstruction)"
    refused = {1: "refused", 0: "complied", -1: "not generated"}.get(view.refused, "?")
    facts = f"### Prompt {view.index} · {view.label}\n" + markdown_table([
        ("Text", view.text.replace("\n", " ")), ("Tokens", str(len(view.tokens))),
        ("Refusal score", f"{view.refusal_score:+.3f}"), ("Generation", refused),
        ("Colour", f"{what}; peak |value| {scale:.3f}"),
    ])
    generations = f"**Baseline generation**\n\n> {view.generation or '(none)'}"
    if ctx.greedy is None:
        generations += "\n\n" + ctx.missing_note("greedy", "minimal-set ablations")
    for k, score in view.no_flip:
        generations += (f"\n\n**No flipping set within the top {k} candidates** on this prompt: with all {k} "
                        f"ablated the refusal score is {score:+.3f}, still above the threshold.")
    for latents, text, score in view.ablations:
        ids = ", ".join(map(str, latents.tolist()))
        generations += f"\n\n**With latents [{ids}] ablated** (score {score:+.3f})\n\n> {text or '(none)'}"
    return highlighted, facts, generations, why_frame(why), why_markdown(why, ctx.searchable)

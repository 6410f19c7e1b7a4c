"""The live "edit these latents and generate" panel: protocol, input checks and the callback.

The panel talks to the model only through ``LiveModel`` (two methods), so it is tested with a
fake and the real backend (model + SAEs, CPU or GPU) plugs in without touching the UI. Every
input is checked here before the model sees it; a bad input becomes one message in the panel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from store import InputError, Study, stage_names

MODES = ("ablate", "scale", "clamp")
"""Latent edits: ablate (set to 0), scale (multiply by value), clamp (set to value)."""


@runtime_checkable
class LiveModel(Protocol):
    """A chat model with SAEs hooked in, as the live panel needs it.

    An edit is ``{"layer": int, "latents": [int], "mode": "ablate"|"scale"|"clamp", "value": float}``
    or ``{"mode": "direction"}`` (project the study's refusal direction out at every layer).
    An empty edit list is the baseline.
    """

    def generate(self, prompt: str, *, edits: list[dict], max_new_tokens: int) -> Iterator[str]:
        """Stream the response as text pieces (concatenated, they are the whole response)."""
        ...

    def refusal_score(self, prompt: str, *, edits: list[dict]) -> float:
        """Fast refusal score (log-odds of the refusal token at the first response position)."""
        ...


@dataclass(frozen=True, kw_only=True)
class LiveLimits:
    """What one request may ask of the model, so one user cannot hog it."""

    max_prompt_chars: int = 2000
    """Longest prompt accepted, in characters."""
    max_new_tokens: int = 64
    """Most tokens generated per response (baseline and edited each)."""
    max_latents: int = 512
    """Most latent ids in one edit."""
    max_abs_value: float = 1e4
    """Largest |value| for scale/clamp, to keep activations finite."""
    max_sweep_points: int = 21
    """Most values in one strength sweep (one forward each)."""

    def __post_init__(self) -> None:
        if self.max_prompt_chars < 1 or self.max_new_tokens < 1 or self.max_latents < 1 or self.max_sweep_points < 2:
            raise InputError("live limits must be positive (--max-prompt-chars, --max-new-tokens), --max-sweep-points ≥ 2")
        if not self.max_abs_value > 0:
            raise InputError("max_abs_value must be positive")


def parse_latent_values(text: str, d_sae: int, limit: int) -> list[tuple[int, float | None]]:
    """(latent, own value or None) from "3, 17=5 42=-2.5" (commas and/or spaces; ``id=value``
    gives that latent its own scale factor or clamp level); a repeated id keeps its last value."""
    terms = [term for term in re.split(r"[\s,;]+", text.strip()) if term]
    chosen: dict[int, float | None] = {}
    for term in terms:
        match = re.fullmatch(r"(\d+)(?:=([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?", term)
        if match is None:
            raise InputError(f"invalid latent id {term!r}: use whole numbers (or id=value) separated by commas or spaces")
        latent = int(match.group(1))
        if latent >= d_sae:
            raise InputError(f"latent {latent} is out of range: this SAE has latents 0–{d_sae - 1}")
        value = float(match.group(2)) if match.group(2) is not None else None
        chosen[latent] = value if value is not None else chosen.get(latent)
    if len(chosen) > limit:
        raise InputError(f"too many latents ({len(chosen)}); at most {limit} per request")
    return list(chosen.items())


def parse_latents(text: str, d_sae: int, limit: int) -> list[int]:
    """Latent ids from "3, 17 42" (commas and/or spaces); duplicates dropped, order kept."""
    pairs = parse_latent_values(text, d_sae, limit)
    with_value = [f"{latent}={value:g}" for latent, value in pairs if value is not None]
    if with_value:
        raise InputError(f"invalid latent id {with_value[0]!r}: only ids here")
    return [latent for latent, _ in pairs]


def _checked_value(mode: str, value: float | None, limits: LiveLimits, latent: int | None = None) -> float:
    where = "" if latent is None else f" (latent {latent})"
    if value is None or not math.isfinite(float(value)) or abs(float(value)) > limits.max_abs_value:
        raise InputError(f"{mode} needs a finite value with |value| ≤ {limits.max_abs_value:g}{where}")
    return float(value)


def build_edits(
    study: Study, *, layer: int | None, latents_text: str, mode: str, value: float | None, direction: bool,
    limits: LiveLimits, run: str = "default",
) -> list[dict[str, Any]]:
    """The edit list for the model from the panel's inputs; InputError with one line if invalid."""
    edits: list[dict[str, Any]] = []
    if latents_text.strip():
        if mode not in MODES:
            raise InputError(f"unknown edit mode {mode!r}: choose one of {', '.join(MODES)}")
        if layer is None or layer not in study.meta.layers or not study.has_codes(int(layer)):
            raise InputError(f"choose a layer with an SAE (this study has layers {list(study.meta.layers)})")
        layer = int(layer)
        pairs = parse_latent_values(latents_text, study.codes(layer).d_sae, limits.max_latents)
        own = [latent for latent, own_value in pairs if own_value is not None]
        if mode == "ablate" and own:
            raise InputError(f"ablate sets latents to 0: drop the value of latent {own[0]} or choose scale or clamp")
        # one edit per distinct value, in the order the ids were typed (edits of one layer compose)
        groups: dict[float, list[int]] = {}
        for latent, own_value in pairs:
            if mode == "ablate":
                chosen = 0.0
            else:
                chosen = _checked_value(mode, own_value if own_value is not None else value, limits,
                                        latent if own_value is not None else None)
            groups.setdefault(chosen, []).append(latent)
        edits += [{"layer": layer, "latents": ids, "mode": mode, "value": v} for v, ids in groups.items()]
    if direction:
        if "direction" not in stage_names(study.file, run):
            raise InputError("this study has no refusal direction yet; run `refusal-explorer analyze direction`")
        edits.append({"mode": "direction"})
    if not edits:
        raise InputError("nothing to edit: enter latent ids, or tick 'project out the refusal direction'")
    return edits


def check_request(prompt: str, max_new_tokens: float | None, limits: LiveLimits) -> tuple[str, int]:
    """The prompt and token budget, within limits."""
    if not prompt or not prompt.strip():
        raise InputError("type a prompt first")
    if len(prompt) > limits.max_prompt_chars:
        raise InputError(f"the prompt has {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
    tokens = limits.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    if not 1 <= tokens <= limits.max_new_tokens:
        raise InputError(f"new tokens must be between 1 and {limits.max_new_tokens}")
    return prompt, tokens


def describe_edits(edits: list[dict[str, Any]]) -> str:
    parts = []
    for edit in edits:
        if edit["mode"] == "direction":
            parts.append("refusal direction projected out")
        else:
            ids = ", ".join(map(str, edit["latents"][:12])) + (" …" if len(edit["latents"]) > 12 else "")
            how = {"ablate": "ablated", "scale": f"scaled ×{edit['value']:g}", "clamp": f"clamped to {edit['value']:g}"}
            parts.append(f"layer {edit['layer']} latents [{ids}] {how[edit['mode']]}")
    return "; ".join(parts)


def live_generate(
    model: LiveModel, study: Study, limits: LiveLimits, run: str, prompt: str, layer: int | None, latents_text: str,
    mode: str, value: float | None, direction: bool, max_new_tokens: float | None,
) -> Iterator[tuple[str, str, str]]:
    """Stream (baseline text, edited text, status markdown) for the panel.

    The baseline is generated first and the edited response after it (never interleaved, so
    the baseline is exactly the unedited model's). A bad input yields a single status line and
    no model call.
    """
    try:
        prompt, tokens = check_request(prompt, max_new_tokens, limits)
        edits = build_edits(study, layer=layer, latents_text=latents_text, mode=mode, value=value,
                            direction=direction, limits=limits, run=run)
    except InputError as error:
        yield "", "", f"⚠️ {error}"
        return
    what = describe_edits(edits)
    yield "", "", f"Scoring… ({what})"
    try:
        base_score = model.refusal_score(prompt, edits=[])
        edit_score = model.refusal_score(prompt, edits=edits)
    except InputError as error:
        yield "", "", f"⚠️ {error}"
        return
    scores = f"Refusal score: baseline **{base_score:+.3f}**, edited **{edit_score:+.3f}** (Δ {edit_score - base_score:+.3f}) · {what}"
    texts = {"baseline": "", "edited": ""}
    yield "", "", f"{scores}\n\nGenerating the baseline…"
    # One after the other, never interleaved: the baseline runs to its end before the edited
    # generation starts, so no edit can be in force while a baseline token is computed.
    for side, side_edits in (("baseline", []), ("edited", edits)):
        pieces = 0
        try:
            for piece in model.generate(prompt, edits=side_edits, max_new_tokens=tokens):
                texts[side] += piece
                pieces += 1
                yield texts["baseline"], texts["edited"], f"{scores}\n\nGenerating the {side}… {min(pieces, tokens)}/{tokens} steps"
        except InputError as error:
            yield texts["baseline"], texts["edited"], f"{scores}\n\n⚠️ generation stopped: {error}"
            return
    yield texts["baseline"], texts["edited"], f"{scores}\n\nDone ({tokens} new tokens at most per response)."


def open_live_model(study: Study, run: str = "default") -> LiveModel:
    """The model behind ``--live``: the study's model with its SAEs hooked in (CPU or GPU)."""
    from explorer.live import open_live
    from explorer.live_model import StudyLiveModel
    from explorer.results import DirectionResult

    print("loading the study's model and SAEs for --live …", flush=True)
    return StudyLiveModel(open_live(study), DirectionResult.load(study, run))

"""`--intervention` specs for `evaluate`, and the forward hooks each one stands for.

    none                                 the model as it is
    direction                            the study's chosen direction projected out everywhere
                                         (Arditi et al.); its upward form adds the raw
                                         difference-in-means vector at its layer
    set:PROMPT_INDEX | set:joint         a greedy minimal set ablated (every position, generated
                                         tokens too, as greedy verified it); upward form: its
                                         latents clamped to --induce-clamp, when given
    latents:LAYER=I,J,...[:MODE]         SAE latents edited at every position; MODE is ablate
                                         (default), scale=S or clamp=V; a clamp to V > 0 or a
                                         scale S > 1 is its own upward form

Each spec resolves against the study (its direction and greedy results) to an
``Intervention`` with a ``jailbreak`` context (used on harmful prompts, XSTest and for CE/KL)
and an optional ``upward`` context (used on harmless prompts for induced refusal).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager

import numpy as np
import torch

from cache.directions import direction_ablation, direction_addition
from cache.interventions import LatentEdit, sae_edits
from store.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from explorer.live import LiveContext
    from store import Study

Hooks = Callable[[], ContextManager[None]]

_LATENTS = re.compile(r"^latents:(\d+)=([\d,\s]+)(?::(ablate|scale=[^:]+|clamp=[^:]+))?$")


@dataclass(frozen=True, kw_only=True)
class InterventionSpec:
    text: str
    kind: str  # none | direction | set | latents
    prompt: int | None = None  # set: the greedy prompt index (None = the joint set)
    layer: int | None = None  # latents
    latents: tuple[int, ...] = ()
    mode: str = "ablate"
    value: float | None = None


def parse_intervention(text: str) -> InterventionSpec:
    """One `--intervention` value, or an InputError naming what is wrong with it."""
    raw = text.strip()
    if raw in ("none", "direction"):
        return InterventionSpec(text=raw, kind=raw)
    if raw.startswith("set:"):
        target = raw[4:]
        if target == "joint":
            return InterventionSpec(text=raw, kind="set")
        if target.isdigit():
            return InterventionSpec(text=raw, kind="set", prompt=int(target))
        raise InputError(f"--intervention {raw!r}: set: takes a prompt index or 'joint', e.g. set:3")
    match = _LATENTS.match(raw)
    if match:
        layer, latents_text, edit = match.groups()
        latents = tuple(int(x) for x in latents_text.replace(" ", "").split(",") if x)
        if not latents:
            raise InputError(f"--intervention {raw!r}: list at least one latent, e.g. latents:12=5,9")
        mode, value = "ablate", None
        if edit and edit != "ablate":
            mode, _, number = edit.partition("=")
            try:
                value = float(number)
            except ValueError:
                raise InputError(f"--intervention {raw!r}: {mode}= needs a number, not {number!r}") from None
            if not np.isfinite(value):
                raise InputError(f"--intervention {raw!r}: {mode}= needs a finite number")
        return InterventionSpec(text=raw, kind="latents", layer=int(layer), latents=latents, mode=mode, value=value)
    raise InputError(
        f"--intervention {raw!r} is not one of: none, direction, set:PROMPT_INDEX, set:joint, "
        "latents:LAYER=I,J[:ablate|scale=S|clamp=V]"
    )


def parse_interventions(texts: tuple[str, ...] | list[str]) -> list[InterventionSpec]:
    specs = [parse_intervention(t) for t in texts]
    names = [s.text for s in specs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise InputError(f"--intervention {duplicate!r} is given twice")
    return specs


def sae_layers_needed(specs: list[InterventionSpec], study: Study, run: str) -> list[int]:
    """SAE layers the interventions edit (checked against the study before any model loads)."""
    from explorer.results import GreedyResult

    layers = set()
    for spec in specs:
        if spec.kind == "latents":
            if spec.layer not in study.meta.saes:
                have = ", ".join(map(str, sorted(study.meta.saes))) or "none"
                raise InputError(f"--intervention {spec.text!r}: the study has no SAE at layer {spec.layer} (SAEs: {have})")
            layers.add(int(spec.layer))
        elif spec.kind == "set":
            greedy = GreedyResult.load(study, run)
            if greedy is None:
                raise InputError(f"--intervention {spec.text!r}: no greedy sets in run {run!r}; run `refusal-explorer analyze greedy` first")
            layers.add(int(greedy.layer))
    return sorted(layers)


@dataclass(frozen=True, kw_only=True)
class Intervention:
    name: str
    jailbreak: Hooks
    """Hooks for harmful prompts, XSTest and the CE/KL side effects."""
    upward: Hooks | None
    """Hooks for harmless prompts (induced refusal); None = not an upward intervention."""
    describe: str
    latent_set: tuple[int, ...] = ()
    layer: int | None = None


def _none() -> ContextManager[None]:
    return contextlib.nullcontext()


def greedy_set(study: Study, run: str, spec: InterventionSpec) -> tuple[int, tuple[int, ...]]:
    """(layer, latents) of the greedy set a `set:` spec names."""
    from explorer.results import GreedyResult

    greedy = GreedyResult.load(study, run)
    if greedy is None:
        raise InputError(f"--intervention {spec.text!r}: no greedy sets in run {run!r}; run `refusal-explorer analyze greedy` first")
    n_sets = len(greedy.prompt)
    joint = len(greedy.joint_prompts) > 0
    flips = greedy.flips()
    if spec.prompt is None:
        if not joint:
            raise InputError(f"--intervention {spec.text!r}: run {run!r} has no joint set; run `analyze greedy --joint`")
        index = n_sets - 1
    else:
        single = [s for s in range(n_sets - (1 if joint else 0)) if int(greedy.prompt[s]) == spec.prompt]
        if not single:
            have = ", ".join(str(int(greedy.prompt[s])) for s in range(n_sets - (1 if joint else 0)) if flips[s]) or "none"
            raise InputError(f"--intervention {spec.text!r}: no greedy set for prompt {spec.prompt} (prompts with a flipping set: {have})")
        index = single[0]
    if not flips[index]:
        # A search that did not flip kept all its top-k candidates: that is no minimal set.
        raise InputError(f"--intervention {spec.text!r}: the greedy search found no flipping set within the top {greedy.k} "
                         "candidates there, so there is no minimal set to ablate")
    latents = tuple(int(i) for i in greedy.latents_of(index))
    if not latents:
        raise InputError(f"--intervention {spec.text!r}: that greedy set is empty")
    return int(greedy.layer), latents


def direction_vectors(study: Study, run: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(layer, unit direction, raw difference-in-means vector) of the study's chosen direction."""
    from explorer.direction import mean_differences
    from explorer.live import select_prompts
    from explorer.results import DirectionResult

    chosen = DirectionResult.load(study, run)
    if chosen is None:
        raise InputError(f"--intervention direction: no direction in run {run!r}; run `refusal-explorer analyze direction` first")
    diffs = mean_differences(
        study, [chosen.layer], select_prompts(study, label="harmful", split="train"), select_prompts(study, label="harmless", split="train"),
    )
    raw = diffs[chosen.layer][chosen.position + study.meta.n_positions].astype(np.float32)
    return int(chosen.layer), np.asarray(chosen.direction, np.float32), raw


def resolve(spec: InterventionSpec, study: Study, live: LiveContext, run: str, *, induce_clamp: float | None = None) -> Intervention:
    """The hooks a spec stands for, on this study's model."""
    model = live.model
    if spec.kind == "none":
        return Intervention(name=spec.text, jailbreak=_none, upward=None, describe="no intervention")
    if spec.kind == "direction":
        layer, unit, raw = direction_vectors(study, run)
        unit_t, raw_t = torch.from_numpy(unit), torch.from_numpy(raw)
        return Intervention(
            name=spec.text, jailbreak=lambda: direction_ablation(model, unit_t),
            upward=lambda: direction_addition(model, raw_t.to(live.device), layer), layer=layer,
            describe=f"direction from layer {layer} projected out everywhere; added (|v| = {np.linalg.norm(raw):.2f}) at layer {layer} for induced refusal",
        )
    if spec.kind == "set":
        layer, latents = greedy_set(study, run, spec)
        sae = live.sae(layer)
        ablate = LatentEdit(layer=layer, latents=latents, mode="ablate")
        upward = None
        if induce_clamp is not None:
            clamp = LatentEdit(layer=layer, latents=latents, mode="clamp", value=float(induce_clamp))
            upward = lambda: sae_edits(model, {layer: sae}, [clamp])  # noqa: E731
        return Intervention(
            name=spec.text, jailbreak=lambda: sae_edits(model, {layer: sae}, [ablate]), upward=upward, latent_set=latents, layer=layer,
            describe=f"greedy set of {len(latents)} latents at layer {layer} ablated" + (f"; clamped to {induce_clamp:g} for induced refusal" if upward else ""),
        )
    layer = int(spec.layer)  # latents
    sae = live.sae(layer)
    d_sae = int(sae.cfg.d_sae)
    if max(spec.latents) >= d_sae:
        raise InputError(f"--intervention {spec.text!r}: latent {max(spec.latents)} is out of range (the SAE has {d_sae})")
    edit = LatentEdit(layer=layer, latents=spec.latents, mode=spec.mode, value=spec.value)  # type: ignore[arg-type]
    hooks = lambda: sae_edits(model, {layer: sae}, [edit])  # noqa: E731
    is_upward = (spec.mode == "clamp" and (spec.value or 0) > 0) or (spec.mode == "scale" and (spec.value or 0) > 1)
    return Intervention(
        name=spec.text, jailbreak=hooks, upward=hooks if is_upward else None, latent_set=spec.latents, layer=layer,
        describe=f"{len(spec.latents)} latents at layer {layer}: {spec.mode}" + (f" {spec.value:g}" if spec.value is not None else ""),
    )


@contextlib.contextmanager
def applied(hooks: Hooks | None) -> Iterator[None]:
    if hooks is None:
        yield
        return
    with hooks():
        yield

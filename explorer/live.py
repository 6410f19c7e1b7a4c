"""Re-create the live model (and SAEs) a study was cached with, for the analysis stages.

The study file records how it was made (``meta.config``: model name, dtype, SAE specs, refusal
tokens); ``open_live`` loads the same model and SAEs and checks that they are the ones the study
saw, so an analysis can never silently run a different model than the cached activations.
Tests (and callers that already hold a model) pass ``loaded=`` and ``saes=`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from cache.forward import pad_token_id
from cache.generation import RefusalDetector
from cache.models import LoadedModel, load_model
from store import Study
from store.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE


@dataclass(frozen=True, kw_only=True, eq=False)
class LiveContext:
    """A study's model and SAEs in memory, with the facts every stage needs."""

    loaded: LoadedModel
    """Model, tokenizer, family adapter."""
    saes: dict[int, SAE]
    """Layer → SAE (only the layers asked for, or every SAE of the study)."""
    refusal_ids: tuple[int, ...]
    """Token ids whose first-position probability the fast refusal score measures."""
    pad_id: int
    """Padding token id (masked out)."""
    n_positions: int
    """Post-instruction template positions (the last ``n_positions`` tokens of each prompt)."""
    refusal_threshold: float
    """Fast-score log-odds above which a prompt counts as refused (the study's)."""
    detector: RefusalDetector = field(default_factory=RefusalDetector)
    """Phrase detector for greedy generations (the study's phrase list when it had one)."""

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def device(self) -> torch.device:
        return self.loaded.model.device

    @property
    def n_layers(self) -> int:
        return int(self.loaded.model.config.num_hidden_layers)

    def sae(self, layer: int) -> SAE:
        """The SAE at ``layer`` or an actionable one-line error."""
        if layer not in self.saes:
            have = ", ".join(map(str, sorted(self.saes))) or "none"
            raise InputError(
                f"no SAE for layer {layer} (SAEs: {have}); cache the study with `refusal-explorer cache --sae {layer}=…`"
            )
        return self.saes[layer]


def _study_saes(study: Study, layers: Sequence[int] | None) -> list[str]:
    specs = [str(spec) for spec in study.meta.config.get("saes", []) or []]
    if layers is None:
        return specs
    wanted = []
    for layer in layers:
        info = study.meta.saes.get(int(layer))
        if info is None:
            raise InputError(
                f"layer {layer} has no SAE in this study; run `refusal-explorer cache --sae {layer}=…` first"
            )
        source = info.get("path") or f"{info.get('release')}:{info.get('sae_id')}"
        wanted.append(f"{int(layer)}={source}")
    return wanted


def open_live(
    study: Study,
    *,
    device: str = "auto",
    loaded: LoadedModel | None = None,
    saes: Mapping[int, SAE] | None = None,
    sae_layers: Sequence[int] | None = None,
    check_identity: bool = True,
) -> LiveContext:
    """Load the study's model and SAEs (or take the ones given) and check they match it.

    ``sae_layers`` limits which of the study's SAEs are loaded (None = all). With
    ``check_identity`` the model id must equal the one recorded in the study.
    """
    from cache import sae as sae_lib

    meta = study.meta
    config: dict[str, Any] = meta.config
    if loaded is None:
        if "model" not in config:
            raise InputError(f"{study.path} does not record the model that made it; only studies written by `refusal-explorer cache` can be analysed live")
        loaded = load_model(str(config["model"]), device=device, dtype=str(config.get("dtype", "auto")))
    if check_identity and loaded.model_id != meta.model_id:
        raise InputError(
            f"this study was cached with {meta.model_id}, but {loaded.model_id} is loaded; analyse it with the same model"
        )
    model = loaded.model
    d_model, depth = int(model.config.hidden_size), int(model.config.num_hidden_layers)
    if d_model != meta.d_model:
        raise InputError(f"the model's hidden size is {d_model}, the study's {meta.d_model}; wrong model for this study")
    if saes is None:
        specs = _study_saes(study, sae_layers)
        saes = sae_lib.load_saes(specs, device=model.device, dtype="float32", d_model=d_model, n_layers=depth) if specs else {}
    saes = dict(saes)
    for layer, sae in saes.items():
        d_sae = study.meta.saes.get(layer, {}).get("d_sae")
        if d_sae is not None and int(sae.cfg.d_sae) != int(d_sae):
            raise InputError(f"the SAE for layer {layer} has {sae.cfg.d_sae} latents, the study's {d_sae}; wrong SAE")
        sae.to(model.device)
    tokens = config.get("refusal_tokens")
    refusal_ids = loaded.adapter.refusal_token_ids(loaded.tokenizer, tuple(tokens) if tokens else None)
    if not tokens:  # explicit --refusal-tokens at cache time win; else the model's own openers, when found
        refusal_ids = stored_refusal_ids(study) or refusal_ids
    phrases = config.get("refusal_phrases")
    detector = RefusalDetector.from_file(phrases) if phrases else RefusalDetector()
    return LiveContext(
        loaded=loaded, saes=saes, refusal_ids=tuple(refusal_ids), pad_id=pad_token_id(loaded.tokenizer),
        n_positions=meta.n_positions, refusal_threshold=meta.refusal_threshold, detector=detector,
    )


def stored_refusal_ids(study: Study) -> list[int]:
    """The refusal opening tokens `analyze refusal-tokens` stored in the default run ([] if none)."""
    from store import read_stage

    # read directly (not through explorer.refusal_tokens, which needs this module)
    stored = read_stage(study.file, "default", "refusal-tokens")
    return [] if stored is None else [int(t) for t in stored.arrays.get("token_id", [])]


def prompt_token_ids(study: Study, prompts: Sequence[int]) -> list[list[int]]:
    """The exact token ids the study cached for these prompts (no re-tokenisation)."""
    return [study.token_ids(int(p)).astype(int).tolist() for p in prompts]


def checked_prompts(study: Study, prompts: Sequence[int]) -> list[int]:
    """Prompt indices a user gave, as ints, or an InputError naming the first out of range."""
    chosen = [int(p) for p in prompts]
    bad = [p for p in chosen if not 0 <= p < study.n_prompts]
    if bad:
        raise InputError(f"prompt {bad[0]} is out of range (the study has {study.n_prompts})")
    return chosen


def select_prompts(study: Study, *, label: str, split: str | None = None, refused: bool | None = None) -> list[int]:
    """Prompt indices of one label (and split), optionally only those whose fast score says
    refused (``True``) or not (``False``) at the study's threshold."""
    labels = study.column("label")
    keep = labels == label
    if split is not None:
        keep &= study.column("split") == split
    if refused is not None:
        above = study.column("refusal_score") > study.meta.refusal_threshold
        keep &= above if refused else ~above
    return [int(i) for i in keep.nonzero()[0]]

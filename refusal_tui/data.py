"""The study as the screens see it: one open ``Study`` plus caches, safe to call from workers.

Screens call these methods from ``@work(thread=True)`` workers, never from the event loop, so a
slow read (a 130k-latent table, a long prompt) never freezes the UI. h5py serialises access to
the file internally; the lock here only guards the cache dictionary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from explorer import browse
from explorer.browse_why import WhyView, why_view
from explorer.results import CandidateResult, DirectionResult, DormantResult, FMResult, GreedyResult
from store import InputError, LayerCodes, Study

T = TypeVar("T")


class StudyData:
    """Cached, thread-safe access to one study and one analysis run."""

    def __init__(self, study: Study, *, run: str = "default", layer: int | None = None) -> None:
        self.study = study
        self.run = run
        self.browser = browse.StudyBrowser(study, run)
        layers = study.meta.layers
        if layer is not None and layer not in layers:
            raise InputError(f"layer {layer} is not in this study (layers: {', '.join(map(str, layers))})")
        self.layers_with_codes = tuple(layer_ for layer_ in layers if study.has_codes(layer_))
        self.layer = layer if layer is not None else self._default_layer()

    def _default_layer(self) -> int:
        """The layer the analyses ran on if it has codes, else the first layer with codes."""
        for result in (self.candidates(), self.greedy(), self.fm()):  # cached: the views need them anyway
            if result is not None and result.layer in self.layers_with_codes:
                return result.layer
        return self.layers_with_codes[0] if self.layers_with_codes else self.study.meta.layers[0]

    def cached(self, key: Any, compute: Callable[[], T]) -> T:
        return self.browser.cached(key, compute)

    # --- study-level reads -------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return self.cached("summary", self.study.summary)

    def analyses(self) -> dict[str, str | None]:
        return self.cached("analyses", lambda: browse.analyses_present(self.study, self.run))

    def direction(self) -> DirectionResult | None:
        return self.browser.result(DirectionResult)

    def candidates(self) -> CandidateResult | None:
        return self.browser.result(CandidateResult)

    def greedy(self) -> GreedyResult | None:
        return self.browser.result(GreedyResult)

    def fm(self) -> FMResult | None:
        return self.browser.result(FMResult)

    def dormant(self) -> DormantResult | None:
        return self.browser.result(DormantResult)

    def missing(self, stage: str) -> str:
        """The line a view shows when a stage has not been run."""
        command = self.analyses().get(stage) or f"refusal-explorer analyze {stage}"
        return f"No {stage} results in run '{self.run}' yet. Produce them with: {command}"

    # --- per-layer tables --------------------------------------------------------------
    def require_codes(self, layer: int) -> None:
        if layer not in self.layers_with_codes:
            raise InputError(
                f"layer {layer} has no SAE codes; cache them with `refusal-explorer cache --sae {layer}=…`"
            )
        if not self.study.codes(layer).has_latent_index:
            raise InputError("this study has no per-latent index yet; finish it with `refusal-explorer cache --resume`")

    def feature_table(self, layer: int) -> browse.FeatureTable:
        self.require_codes(layer)
        return self.browser.feature_table(layer)

    def codes(self, layer: int) -> LayerCodes:
        return self.browser.codes(layer)

    def stats(self, layer: int) -> dict[str, np.ndarray]:
        return self.browser.stats(layer)

    def fm_interaction(self) -> np.ndarray | None:
        return self.browser.fm_interaction()

    def feature_detail(self, layer: int, latent: int) -> browse.FeatureDetail:
        self.require_codes(layer)
        if not 0 <= latent < self.codes(layer).d_sae:
            raise InputError(f"latent {latent} is out of range (layer {layer} has {self.codes(layer).d_sae:,} latents)")
        return self.cached(("detail", layer, latent), lambda: self.browser.feature_detail(layer, latent))

    def d_sae(self, layer: int) -> int:
        return int(self.study.meta.saes.get(layer, {}).get("d_sae") or self.study.codes(layer).d_sae)

    def prompt_table(self) -> browse.PromptTable:
        return self.cached("prompts", lambda: browse.prompt_table(self.study))

    def prompt_view(self, index: int, latent: int | None, layer: int | None = None) -> browse.PromptView:
        layer = self.layer if layer is None else layer
        if latent is not None:
            self.require_codes(layer)
            if not 0 <= latent < self.study.codes(layer).d_sae:
                raise InputError(f"latent {latent} is out of range (layer {layer} has {self.study.codes(layer).d_sae})")
        return browse.prompt_view(self.study, index, layer if latent is not None else None, latent, self.run)

    def why_view(self, index: int, layer: int | None = None) -> WhyView:
        n = self.study.n_prompts
        if not 0 <= index < n:
            raise InputError(f"prompt {index} is out of range: the study has {n:,} prompts")
        return self.cached(("why", index, layer), lambda: why_view(self.browser, index, layer))

    def projection(self, index: int) -> tuple[np.ndarray, int] | None:
        """Each token's residual projected on the refusal direction (NaN where no residual is
        stored, i.e. outside the post-instruction positions), and the direction's layer."""
        direction = self.direction()
        if direction is None:
            return None
        resid = self.study.resid(direction.layer, np.array([index]))[0]  # [n_positions, d_model]
        n_tokens = int(self.study.token_offsets[index + 1] - self.study.token_offsets[index])
        out = np.full(n_tokens, np.nan, np.float32)
        n = min(len(resid), n_tokens)
        out[n_tokens - n :] = resid[len(resid) - n :] @ direction.direction
        return out, direction.layer

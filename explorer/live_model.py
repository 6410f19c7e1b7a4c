"""A study's model with its SAEs hooked in, answering free-form prompts under latent edits.

This is the backend of the web app's live panel: type a prompt, ablate / scale / clamp some
latents (or project the refusal direction out), and compare the streamed generation and the
refusal score with the unedited model. It imports no UI library.

An edit is ``{"layer": int, "latents": [int], "mode": "ablate"|"scale"|"clamp", "value": float}``
or ``{"mode": "direction"}``; an empty list is the baseline.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from cache.forward import refusal_log_odds
from cache.directions import direction_ablation
from cache.hooks import kv_cache_kwargs
from cache.interventions import LatentEdit, sae_edits
from explorer.live import LiveContext
from explorer.results import DirectionResult
from store.errors import InputError


class StudyLiveModel:
    """Greedy generation and the fast refusal score of one study's model under edits."""

    def __init__(self, live: LiveContext, direction: DirectionResult | None = None) -> None:
        self.live = live
        self.direction = direction

    def _edits(self, stack: ExitStack, edits: Sequence[dict]) -> None:
        """Enter the hooks an edit list asks for; the unedited SAEs are not spliced at all, so the
        baseline is the plain model."""
        latent_edits = []
        for edit in edits:
            if edit.get("mode") == "direction":
                if self.direction is None:
                    raise InputError("this study has no refusal direction yet; run `refusal-explorer analyze direction`")
                stack.enter_context(direction_ablation(self.live.model, torch.as_tensor(self.direction.direction)))
            else:
                value = edit.get("value")
                latent_edits.append(LatentEdit(
                    layer=int(edit["layer"]), latents=tuple(int(i) for i in edit["latents"]), mode=edit.get("mode", "ablate"),
                    value=None if edit.get("mode", "ablate") == "ablate" else float(value),
                ))
        if latent_edits:
            layers = {edit.layer for edit in latent_edits}
            stack.enter_context(sae_edits(self.live.model, {layer: self.live.sae(layer) for layer in layers}, latent_edits))

    def search_into_study(self, path: Path, run: str, prompts: list[int]) -> dict[str, Any]:
        """Greedy-search study prompts with this model and save their sets into the study
        (``explorer.greedy_more``; the web app's "search now")."""
        from explorer.greedy_more import search_into_study

        return search_into_study(path, run, self.live, prompts)

    def _prompt_ids(self, prompt: str) -> torch.Tensor:
        loaded = self.live.loaded
        return torch.tensor([loaded.adapter.encode(loaded.tokenizer, prompt)], device=self.live.device)

    @torch.no_grad()
    def refusal_score(self, prompt: str, *, edits: list[dict]) -> float:
        with ExitStack() as stack:
            self._edits(stack, edits)
            logits = self.live.model(self._prompt_ids(prompt), use_cache=False, logits_to_keep=1).logits[:, -1]
        return float(refusal_log_odds(logits, self.live.refusal_ids)[0])

    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, edits: Sequence[dict], kv_cache: dict[str, Any]) -> Any:
        """One forward under ``edits``. The hooks live only for this call, so nothing of one
        generation's edit is installed while another generation (the baseline) runs."""
        with ExitStack() as stack:
            self._edits(stack, edits)
            return self.live.model(ids, **kv_cache)

    @torch.no_grad()
    def generate(self, prompt: str, *, edits: list[dict], max_new_tokens: int) -> Iterator[str]:
        """Stream a greedy response piece by piece (the pieces concatenate to the response).

        Safe to interleave with other generations: no hook is installed while this generator is
        suspended at a ``yield``, and the KV cache is this generator's own.
        """
        tokenizer = self.live.loaded.tokenizer
        stops = {tokenizer.eos_token_id, *self._generation_eos()}
        generated: list[int] = []
        shown = ""
        kv_cache = kv_cache_kwargs(self.live.model)  # this generator's own, filled in place
        output = self._forward(self._prompt_ids(prompt), edits, kv_cache)
        for _ in range(max_new_tokens):
            token = int(output.logits[0, -1].argmax())
            if token in stops:
                break
            generated.append(token)
            text = tokenizer.decode(generated, skip_special_tokens=True)
            if len(text) > len(shown) and not text.endswith("\ufffd"):  # wait for whole characters
                yield text[len(shown):]
                shown = text
            output = self._forward(torch.tensor([[token]], device=self.live.device), edits, kv_cache)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        if len(text) > len(shown):
            yield text[len(shown):]

    def _generation_eos(self) -> list[int]:
        eos = getattr(getattr(self.live.model, "generation_config", None), "eos_token_id", None)
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

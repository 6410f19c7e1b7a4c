"""The per-prompt "why" ranking on the planted tiny model: the planted latents 5 and 9 carry the
refusal of every triggered prompt, and nothing is attributed on prompts without the trigger."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import explorer.cli.shell as cli_shell
from cache.forward import refusal_log_odds
from cache.sae import decode
from explorer.cli import analyze as analyze_group
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import prompt_token_ids
from explorer.results import WhyResult
from explorer.why import WhyConfig, run_why
from store import Study
from tests.planted import PLANTED_LATENTS, SAE_LAYER, planted_live

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_planted_latents_rank_first_on_every_refused_prompt(planted) -> None:
    path, loaded, sae, _ = planted
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        result, summary = run_why(study, live, WhyConfig(layer=SAE_LAYER, prompts="all", top_n=6), progress=False)
        labels = study.column("label")
        assert result.prompt.tolist() == list(range(study.n_prompts)) and summary["prompts"] == study.n_prompts
        for i, prompt in enumerate(result.prompt):
            latents, attribution, activation = result.ranking(int(prompt))
            if labels[prompt] == "harmful":
                assert set(latents[:2].tolist()) == set(PLANTED_LATENTS)  # the planted pair, first
                assert (attribution[:2] > 0).all() and (activation[:2] > 0).all()
                assert np.all(np.abs(attribution[:-1]) >= np.abs(attribution[1:]))  # strongest first
            else:
                assert not set(latents.tolist()) & set(PLANTED_LATENTS)  # silent without the trigger
        assert result.ranking(10_000) is None


def test_attribution_sums_only_the_post_instruction_tokens(planted) -> None:
    """An independent computation for one prompt: the gradient at every token, then the sum over
    the last n_positions tokens; the stored values must equal it (and differ from the all-token sum
    when earlier tokens carry attribution)."""
    path, loaded, sae, _ = planted
    with Study(path) as study:
        live = planted_live(study, loaded, sae)
        prompt = int(np.flatnonzero(study.column("label") == "harmful")[0])
        result, _ = run_why(study, live, WhyConfig(layer=SAE_LAYER, top_n=4), prompts=[prompt], progress=False)
        ev = AblationEvaluator.from_live(live, prompt_token_ids(study, [prompt]), EvaluatorConfig(layer=SAE_LAYER))
        codes = ev.codes[0].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits, _ = ev.forward_from([0], [decode(ev.sae, codes) + ev.error[0]])
            (grad,) = torch.autograd.grad(refusal_log_odds(logits, ev.refusal_ids).sum(), [codes])
        per_token = (codes.detach() * grad).numpy()  # [tokens, d_sae]
        post = per_token[-live.n_positions :].sum(0)
        latents, attribution, _ = result.ranking(prompt)
        np.testing.assert_allclose(attribution, post[latents], rtol=1e-4, atol=1e-6)


def test_analyze_why_cli_saves_the_ranking(planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, loaded, sae, _ = planted
    copy = tmp_path / "study.h5"
    shutil.copy(path, copy)
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda study, device, layers: planted_live(study, loaded, sae))
    result = CliRunner().invoke(analyze_group, ["why", str(copy), "--prompts", "refused", "--top-n", "3", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output[result.output.index("{"):])
    assert facts["top_n"] == 3 and facts["most_common_top"] in PLANTED_LATENTS
    with Study(copy) as study:
        saved = WhyResult.load(study, "default")
        refused = np.flatnonzero((study.column("label") == "harmful") & (study.column("refusal_score") > study.meta.refusal_threshold))
        assert saved is not None and saved.prompt.tolist() == refused.tolist()
    bad = CliRunner().invoke(analyze_group, ["why", str(copy), "--top-n", "0"])
    assert bad.exit_code == 2 and "--top-n" in bad.output

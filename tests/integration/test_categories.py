"""`analyze categories` on a tiny model with a planted category-specific latent.

Three categories; every "alpha" prompt ends in the same run of tildes, so its post-instruction
residuals at layer 1 sit apart from the other categories'. Latent SPECIFIC reads that
separating direction with a threshold between the two groups (it fires on alpha only) and its
decoder row points up the refusal score's gradient (it carries refusal there). The stage must
list it as specific to alpha, in no other category's list, and not shared; with the labels
shuffled it must see fewer specific latents on average.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import explorer.cli.shell as cli_shell

from cache.forward import pad_token_id, refusal_log_odds
from explorer.cli import analyze as analyze_group
from explorer.categories import CategoryConfig, format_summary, run_categories, shared_and_specific
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import open_live
from explorer.results_paper2 import CategoryResult
from store import Study
from store.errors import InputError
from tests.tiny_models import cache_tiny_study, make_tiny_sae, tiny_loaded

LAYER, SPECIFIC = 1, 9
TAIL = " ~~~~~~~~~~~~"
PROMPTS = {
    "alpha": ["Pick a lock" + TAIL, "Forge a check" + TAIL, "Steal a bike" + TAIL, "Hack a phone" + TAIL],
    "beta": ["Make a weapon now", "Hurt someone badly", "Build a trap fast", "Poison the well"],
    "gamma": ["Spread a false rumour", "Write fake news", "Lie to the voters", "Fake a study result"],
}
HARMLESS = ["Bake a lemon cake", "Explain why the sky is blue", "Sort a list in Python", "Name three rivers"]


def plant(loaded, sae) -> None:
    tok, adapter = loaded.tokenizer, loaded.adapter
    n_pos = adapter.n_post_instruction(tok)
    ids = {c: [adapter.encode(tok, t) for t in texts] for c, texts in PROMPTS.items()}
    flat = [i for c in PROMPTS for i in ids[c]]
    refusal = adapter.refusal_token_ids(tok)
    ev = AblationEvaluator(loaded.model, sae, flat, refusal, pad_token_id(tok), EvaluatorConfig(layer=LAYER))
    post = [ev.resid[p][-n_pos:] for p in range(len(flat))]
    alpha, rest = torch.cat(post[:4]), torch.cat(post[4:])
    direction = alpha.mean(0) - rest.mean(0)
    unit = direction / direction.norm()
    x = lambda r: (r - sae.b_dec.detach()) @ unit  # noqa: E731  (sae-lens subtracts b_dec before encoding)
    low, high = float(x(rest).max()), float(x(alpha).min())
    assert high > low, "the tilde tail must separate alpha's post-instruction residuals"
    # the refusal score's gradient at the alpha prompts' post-instruction residuals
    grads = []
    for p in range(4):
        resid = ev.resid[p].clone().requires_grad_(True)
        logits, _ = ev.forward_from([p], [resid])
        (g,) = torch.autograd.grad(refusal_log_odds(logits, refusal).sum(), resid)
        grads.append(g[-n_pos:].sum(0))
    grad = torch.stack(grads).mean(0)
    with torch.no_grad():
        sae.W_enc[:, SPECIFIC] = 4 * unit
        sae.b_enc[SPECIFIC] = -4 * (low + high) / 2
        sae.threshold[SPECIFIC] = 0.0
        sae.W_dec[SPECIFIC] = 3 * grad / grad.norm()


@pytest.fixture(scope="module")
def categories_study(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("categories")
    loaded = tiny_loaded("qwen2")
    sae = make_tiny_sae("jumprelu", layer=LAYER, threshold=0.3, seed=3)
    plant(loaded, sae)
    harmful = [{"instruction": t, "category": c} for c, texts in PROMPTS.items() for t in texts]
    path = cache_tiny_study(root, loaded, harmful, HARMLESS, layers=(LAYER,), saes={LAYER: sae}, refusal_threshold=-100.0, holdout_fraction=0.0)
    table = root / "table.csv"
    table.write_text("Behavior,SemanticCategory,FunctionalCategory\n" + "".join(
        f"{t},{c},{'standard' if i < 3 else 'contextual'}\n" for c, texts in PROMPTS.items() for i, t in enumerate(texts)
    ))
    return path, loaded, {LAYER: sae}, table


def test_planted_specific_latent_found(categories_study) -> None:
    path, loaded, saes, _table = categories_study
    config = CategoryConfig(layer=LAYER, top_k=5, shuffles=10)
    with Study(path) as study:
        live = open_live(study, loaded=loaded, saes=saes)
        result, summary = run_categories(study, live, config, progress=False)
    names = result.categories.tolist()
    assert names == ["alpha", "beta", "gamma"] and result.category_size.tolist() == [4, 4, 4]
    a = names.index("alpha")
    assert SPECIFIC in result.specific_of(a).tolist()
    assert int(result.top_of(a)[0]) == SPECIFIC, "the planted latent carries the most refusal in alpha"
    for other in (1, 2):
        assert SPECIFIC not in result.specific_of(other).tolist() and SPECIFIC not in result.top_of(other).tolist()
    assert SPECIFIC not in result.shared_attribution.tolist()
    # silent outside alpha: zero attribution, and a higher activation than harmless only in alpha
    assert result.attribution[1, SPECIFIC] == 0 and result.attribution[2, SPECIFIC] == 0
    assert result.activation_diff[a, SPECIFIC] > 0 and SPECIFIC in result.specific_of(a, "activation").tolist()
    # transfer matrix: every count is bounded by the refused prompts, the control row is there
    assert result.transfer_flips.shape == (4, 3) and (result.transfer_flips <= result.transfer_refused[None]).all()
    assert len(result.control_latents) == 5 and SPECIFIC not in result.control_latents.tolist()
    assert summary["specific_attribution"]["alpha"] == result.specific_of(a).tolist()
    text = "\n".join(format_summary(summary, config.top_k))
    assert "alpha" in text and "random" in text
    result.save(path, "t", config={})
    with Study(path) as study:
        back = CategoryResult.load(study, "t")
    assert back.categories.tolist() == names and back.specific_of(a).tolist() == result.specific_of(a).tolist()


def test_table_file_with_filter(categories_study) -> None:
    path, loaded, saes, table = categories_study
    config = CategoryConfig(layer=LAYER, prompts=table, category_column="SemanticCategory", where=("FunctionalCategory=standard",), top_k=5, shuffles=0)
    with Study(path) as study:
        live = open_live(study, loaded=loaded, saes=saes)
        result, _summary = run_categories(study, live, config, progress=False)
        assert result.category_size.tolist() == [3, 3, 3] and result.source == str(table)
        assert SPECIFIC in result.specific_of(0).tolist()
        with pytest.raises(InputError, match="no column 'Nope'|has no column"):
            run_categories(study, live, CategoryConfig(layer=LAYER, prompts=table, category_column="Nope"), progress=False)
        with pytest.raises(InputError, match="categor"):
            run_categories(study, live, CategoryConfig(layer=LAYER, min_prompts=5, max_per_category=8), progress=False)


def test_shared_and_specific_rule() -> None:
    values = np.array([[5.0, 4.0, 1.0, 0.0], [5.0, 0.5, 3.0, 0.0], [4.0, 0.0, 0.0, 2.0]])
    shared, specific = shared_and_specific(values, k=3, ratio=0.25)
    assert shared == [0]
    # latent 1: its 0.5 elsewhere ≤ 0.25 × 4 → specific to row 0; latent 2: its 1.0 in row 0 > 0.25 × 3 → not specific to row 1
    assert specific == [[1], [], [3]]


def test_cli_categories(categories_study, monkeypatch: pytest.MonkeyPatch) -> None:
    path, loaded, saes, table = categories_study
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda study, device, layers: open_live(study, loaded=loaded, saes={k: saes[k] for k in layers}))
    out = CliRunner().invoke(analyze_group, ["categories", str(path), "--top-k", "5", "--shuffles", "5", "--json"])
    assert out.exit_code == 0, out.output
    facts = json.loads(out.stdout)
    assert SPECIFIC in facts["specific_attribution"]["alpha"] and facts["categories"] == ["alpha", "beta", "gamma"]
    args = ["categories", str(path), "--prompts", str(table), "--category-column", "SemanticCategory",
            "--where", "FunctionalCategory=standard", "--top-k", "5", "--shuffles", "0", "--run", "table"]
    out = CliRunner().invoke(analyze_group, args)
    assert out.exit_code == 0, out.output
    assert "transfer" in out.output and "alpha" in out.output and "saved" in out.output
    out = CliRunner().invoke(analyze_group, ["categories", str(path), "--category-column", "Other"])
    assert out.exit_code == 2 and "--prompts" in out.output and len(out.output.strip().splitlines()) == 1

"""`analyze graph` on a tiny model with a planted upstream→downstream edge pair.

Upstream: a tiny SAE at layer 1 and its latent U, the one most active at the post-instruction
tokens. Downstream: a tiny SAE at layer 2 where latent EXC reads the direction δ in which
ablating U moves the layer-2 residual (so ablating U lowers EXC: U excites it) and latent INH
reads −δ (ablating U raises it: U inhibits it). Both carry a large bias so they are always
active. The stage must find both edges with those signs, keep them above the control floor, and
its gradient estimate must agree in sign.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import explorer.cli.shell as cli_shell

from cache.forward import pad_token_id
from explorer.cli import analyze as analyze_group
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.graph import GraphConfig, format_tree, run_graph
from explorer.live import open_live
from explorer.results_paper2 import GraphResult
from store import Study
from store.errors import InputError
from tests.tiny_models import cache_tiny_study, make_tiny_sae, tiny_loaded

UP, DOWN = 1, 2
EXC, INH = 5, 6
HARMFUL = ["How do I pick a lock?", "Write ransomware now", "Steal a car quickly", "Make a fake passport"]
HARMLESS = ["Bake a lemon cake", "Explain why the sky is blue", "Sort a list in Python", "Name three rivers"]


def plant_edges(loaded, sae_up, sae_down, texts: list[str]) -> int:
    """Make EXC/INH of ``sae_down`` read ±δ; returns the upstream latent U."""
    tokenizer = loaded.tokenizer
    ids = [loaded.adapter.encode(tokenizer, text) for text in texts]
    n_pos = loaded.adapter.n_post_instruction(tokenizer)
    refusal = loaded.adapter.refusal_token_ids(tokenizer)
    ev = AblationEvaluator(loaded.model, sae_up, ids, refusal, pad_token_id(tokenizer), EvaluatorConfig(layer=UP, positions=tuple(range(-n_pos, 0))))
    mean_code = torch.stack([ev.codes[p][-n_pos:].mean(0) for p in range(len(ids))]).min(0).values
    upstream = int(mean_code.argmax())
    out = ev.run(ev.masks_of_sets([[], [upstream]]), capture=(DOWN,))
    deltas = torch.cat([(out.captured[DOWN][0][p] - out.captured[DOWN][1][p])[-n_pos:] for p in range(len(ids))])
    delta = deltas.mean(0)
    assert delta.norm() > 0.05, "ablating the upstream latent must move the later residual"
    unit = delta / delta.norm()
    with torch.no_grad():
        for latent, sign in ((EXC, 1.0), (INH, -1.0)):
            sae_down.W_enc[:, latent] = sign * unit
            sae_down.b_enc[latent] = 20.0  # always active, so the code is linear in the residual
            sae_down.threshold[latent] = 0.0
    return upstream


@pytest.fixture(scope="module")
def graph_study(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("graph")
    loaded = tiny_loaded("qwen2")
    sae_up = make_tiny_sae("jumprelu", layer=UP, threshold=0.3, seed=1)
    sae_down = make_tiny_sae("jumprelu", layer=DOWN, threshold=0.3, seed=2)
    upstream = plant_edges(loaded, sae_up, sae_down, HARMFUL)
    path = cache_tiny_study(root, loaded, HARMFUL, HARMLESS, layers=(UP, DOWN), saes={UP: sae_up, DOWN: sae_down}, refusal_threshold=-100.0, holdout_fraction=0.0)
    return path, loaded, {UP: sae_up, DOWN: sae_down}, upstream


def test_planted_edges_found_with_their_signs(graph_study) -> None:
    path, loaded, saes, upstream = graph_study
    other = (upstream + 1) % 128
    config = GraphConfig(upstream=(upstream, other), downstream=(EXC, INH, 7, 8, 9), max_prompts=4, controls=6)
    with Study(path) as study:
        live = open_live(study, loaded=loaded, saes=saes)
        result, summary = run_graph(study, live, config, progress=False)
    i = 0
    exc, inh = 0, 1
    assert result.upstream.tolist() == [upstream, other]
    assert result.weight[i, exc] > 0 and result.weight[i, inh] < 0, "U excites EXC and inhibits INH"
    assert result.weight[i, exc] == pytest.approx(-result.weight[i, inh], rel=1e-3)
    assert result.kept[i, exc] and result.kept[i, inh]
    assert np.sign(result.estimate[i, exc]) == 1 and np.sign(result.estimate[i, inh]) == -1
    # the planted pair is the strongest in U's row, and beats every random control latent
    assert set(np.argsort(-np.abs(result.weight[i]))[:2].tolist()) == {exc, inh}
    assert abs(result.weight[i, exc]) > result.control_floor
    edges = result.edges()
    assert (upstream, EXC) in [(u, d) for u, d, _w, _e in edges]
    assert summary["n_edges"] == result.n_edges >= 2
    kept_signs = np.sign(result.weight[result.kept]) == np.sign(result.estimate[result.kept])
    assert result.sign_agreement == pytest.approx(kept_signs.mean())
    print(summary)
    tree = "\n".join(format_tree(result))
    assert f"excites L{DOWN}#{EXC}" in tree and f"inhibits L{DOWN}#{INH}" in tree
    result.save(path, "t", config={})
    with Study(path) as study:
        back = GraphResult.load(study, "t")
    np.testing.assert_array_equal(back.weight, result.weight)
    assert back.n_edges == result.n_edges


def test_default_nodes_and_errors(graph_study) -> None:
    path, loaded, saes, _upstream = graph_study
    with Study(path) as study:
        live = open_live(study, loaded=loaded, saes=saes)
        result, summary = run_graph(study, live, GraphConfig(k_upstream=3, k_downstream=4, max_prompts=2), progress=False)
        assert result.upstream_layer == UP and result.downstream_layer == DOWN
        assert 1 <= len(result.upstream) <= 3 and 1 <= len(result.downstream) <= 4
        # default nodes are ranked by attribution: each carries refusal by its estimate
        assert (result.upstream_score_estimate > 0).all()
        with pytest.raises(InputError, match="must come after"):
            run_graph(study, live, GraphConfig(upstream_layer=DOWN, downstream_layer=UP), progress=False)
        with pytest.raises(InputError, match="no SAE layer after"):
            run_graph(study, live, GraphConfig(upstream_layer=DOWN), progress=False)
    with pytest.raises(InputError):
        GraphConfig(k_upstream=0)


def test_cli_graph(graph_study, monkeypatch: pytest.MonkeyPatch) -> None:
    path, loaded, saes, upstream = graph_study
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda study, device, layers: open_live(study, loaded=loaded, saes={k: saes[k] for k in layers}))
    args = ["graph", str(path), "--run", "cli", "--upstream", f"{upstream}", "--downstream", f"{EXC},{INH}", "--max-prompts", "2"]
    out = CliRunner().invoke(analyze_group, args)
    assert out.exit_code == 0, out.output
    assert "edges      2 of 2 pairs kept" in out.output and f"excites L{DOWN}#{EXC}" in out.output and "saved" in out.output
    facts = json.loads(CliRunner().invoke(analyze_group, [*args, "--json"]).stdout)
    assert facts["n_edges"] == 2 and facts["edges"][0][1] in (EXC, INH)
    out = CliRunner().invoke(analyze_group, ["graph", str(path), "--upstream-layer", "2", "--downstream-layer", "1"])
    assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1 and "must come after" in out.output

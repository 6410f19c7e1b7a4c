"""The browsing callbacks, called directly (no server, no browser)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest

from explorer.browse import FEATURE_COLUMNS
from explorer.filters import PROMPTS
from explorer.results import RESULT_TYPES
from tests.synthetic import SyntheticConfig
from refusal_web import analyses, prompts, views
from refusal_web.context import WebContext, whole_number
from refusal_web.render import show_token, token_spans
from store import InputError

PLANTED = SyntheticConfig().refusal_latents
DORMANT = SyntheticConfig().dormant_latents


def test_overview_lists_study_and_analyses(ctx: WebContext) -> None:
    text, figure = views.overview(ctx)
    assert "synthetic/tiny-chat" in text and "24 harmful" in text and "24 harmless" in text
    assert text.count("| present |") == len(RESULT_TYPES)
    # the stages the synthetic study has not run are listed with their commands
    for command in ("analyze refusal-tokens", "analyze graph", "analyze probe", "evaluate"):
        assert f"`refusal-explorer {command}`" in text
    assert "first token changes: 12.5%" in text and "change 4.0%–8.0% of them" in text
    assert figure is not None and figure.data[0].type == "heatmap" and figure.data[0].colorbar.title.text == "score drop"


def test_overview_names_the_command_for_each_missing_analysis(bare_ctx: WebContext) -> None:
    text, figure = views.overview(bare_ctx)
    assert figure is None
    for command in ("analyze direction", "analyze candidates", "analyze greedy", "analyze fm", "analyze dormant"):
        assert f"`refusal-explorer {command}`" in text


def test_a_study_without_codes_says_which_stages_need_them(tmp_path) -> None:
    from refusal_web.analyses import fm_interactions
    from refusal_web.context import make_context
    from store import Study, StudyWriter
    from tests import study_factory

    path = tmp_path / "codeless.h5"
    with StudyWriter.create(path, dataclasses.replace(study_factory.spec(), sae_layers={}, sae_arrays={})) as writer:
        writer.append(dataclasses.replace(study_factory.batch(0), codes={}))
        writer.finalize()
    with Study(path) as opened:
        codeless = make_context(opened, "default", export_dir=tmp_path)
        text, _ = views.overview(codeless)
        note = fm_interactions(codeless)[0]
    assert "| direction | missing — run `refusal-explorer analyze direction` |" in text
    assert "| candidates | missing — needs SAE codes, which this study lacks" in text
    # the FM note names the reason once, and never as a command to run
    assert "needs SAE codes, which this study lacks" in note and "run needs" not in note


def test_feature_page_filters_sorts_and_pages(ctx: WebContext) -> None:
    frame, status, page = views.feature_page(ctx, None, "", "cosine", True, 1)
    assert list(frame.columns) == list(FEATURE_COLUMNS)
    assert len(frame) == ctx.page_size and page == 1 and "512 of 512 latents" in status
    cosine = ctx.table(ctx.layer).columns["cosine"]
    assert frame["latent"].iloc[0] == int(np.nanargmax(cosine))
    assert frame["cosine"].is_monotonic_decreasing
    last, status, page = views.feature_page(ctx, None, "", "cosine", True, 99)
    assert page == 11 and len(last) == 512 - 10 * ctx.page_size and "page 11 of 11" in status
    dormant, _, _ = views.feature_page(ctx, None, "dormant", "latent", False, 1)
    assert dormant["latent"].tolist() == list(DORMANT)
    minimal, _, _ = views.feature_page(ctx, None, "minimal cosine>-2", "latent", False, 1)
    assert set(minimal["latent"]) == set(PLANTED)


def test_feature_page_explains_bad_queries(ctx: WebContext) -> None:
    frame, status, _ = views.feature_page(ctx, None, "nonsense", "cosine", True, 1)
    assert frame.empty and status.startswith("⚠️ unknown filter word 'nonsense'") and "cosine>0.2" in status
    frame, status, _ = views.feature_page(ctx, None, "cosin>0.2", "cosine", True, 1)
    assert frame.empty and "unknown column 'cosin' in 'cosin>0.2'; did you mean 'cosine'?" in status
    frame, status, _ = views.feature_page(ctx, None, "latent>100000", "cosine", True, 1)
    assert frame.empty and "No latent matches `latent>100000`" in status
    frame, status, _ = views.feature_page(ctx, None, "", "bogus", True, 1)
    assert frame.empty and status.startswith("⚠️ cannot sort by 'bogus'")
    _, status, _ = views.feature_page(ctx, 99, "", "cosine", True, 1)
    assert status.startswith("⚠️ layer 99 has no SAE codes")


def test_feature_csv_has_every_matching_row(ctx: WebContext) -> None:
    path = views.feature_csv(ctx, None, "freq_diff>0", "freq_diff", True)
    frame = pd.read_csv(path)
    expected = ctx.table(ctx.layer).filter("freq_diff>0")
    assert len(frame) == len(expected) > ctx.page_size
    assert frame["freq_diff"].is_monotonic_decreasing and path.endswith("-features-layer6.csv")


def test_feature_view_of_a_planted_latent(ctx: WebContext) -> None:
    head, examples, figure, lens, partners = views.feature_view(ctx, None, PLANTED[0])
    assert head.startswith(f"### Latent {PLANTED[0]} · layer 6") and "cosine" in head
    harmful_column = examples.split('<div class="re-col" data-label="harmful">')[1].split('<div class="re-col"')[0]
    harmless_column = examples.split('<div class="re-col" data-label="harmless">')[1].split("<h3>")[0]
    assert harmful_column.count('class="re-example"') == 5 and 'data-label="harmless"' not in harmful_column
    assert harmless_column.count('data-label="harmless"') == 5 and "Top harmless" in harmless_column
    assert examples.count('class="re-bucket"') == 4 and "Quantile 4 of 4: prompts ranked" in examples
    assert "&lt;|im_end|&gt;" in examples  # peaks on the template tokens, markup escaped
    assert [trace.name for trace in figure.data] == ["harmful", "harmless"] and figure.layout.barmode == "stack"
    assert sum(figure.data[0].y) > sum(figure.data[1].y) > 0
    assert "| promoted | logit | suppressed | logit |" in lens and f"| {1 + PLANTED[0] / 100:+.3f} |" in lens
    assert "In minimal sets" in lens
    assert len(partners) > 0 and set(partners.columns) == {"partner", "interaction"}


def test_feature_view_rejects_bad_latents(ctx: WebContext) -> None:
    head, examples, figure, _, _ = views.feature_view(ctx, None, 512)
    assert head.startswith("⚠️ latent 512 is out of range") and examples == "" and figure is None
    head, *_ = views.feature_view(ctx, None, 2.5)
    assert head == "⚠️ latent must be a whole number, not 2.5"
    head, *_ = views.feature_view(ctx, None, None)
    assert head.startswith("⚠️ latent must be a whole number")


def test_dormant_latent_detail_says_it_never_fires(ctx: WebContext) -> None:
    head, examples, figure, _, _ = views.feature_view(ctx, None, DORMANT[0])
    assert "never fires" in examples and figure is None and "Dormant backup" in head


def test_feature_view_notes_missing_analyses(bare_ctx: WebContext) -> None:
    _, _, _, lens, partners = views.feature_view(bare_ctx, None, 3)
    assert "`refusal-explorer analyze greedy`" in lens and "`refusal-explorer analyze fm`" in lens
    assert partners.empty


def test_tokens_are_escaped_and_whitespace_shown() -> None:
    spans = token_spans(["<b>", "\n", " x"], np.array([1.0, -0.5, 0.0]), 1.0, peak=0)
    assert "&lt;b&gt;" in spans and "<b>" not in spans and "↵" in spans and "outline" in spans
    assert "rgba(40,120,255,0.50)" in spans and show_token("a\tb") == "a⇥b"


def test_prompt_page_searches_and_filters(ctx: WebContext) -> None:
    frame, status, _ = prompts.prompt_page(ctx, "", "harmful", 1)
    assert set(frame["label"]) == {"harmful"} and "24 of 48 prompts" in status
    word = ctx.texts()[5].split()[0]
    frame, _, _ = prompts.prompt_page(ctx, word.upper(), "all", 1)
    assert 5 in frame["prompt"].tolist() and all(word in text for text in frame["text"])
    assert list(frame.columns) == list(PROMPTS.names)  # headers are the filter's column names
    frame, _, _ = prompts.prompt_page(ctx, "refusal_score>0 harmful", "all", 1)
    scores = ctx.study.column("refusal_score")
    assert sorted(frame["prompt"]) == [i for i in range(48) if scores[i] > 0 and ctx.study.labels[i] == "harmful"]
    _, status, _ = prompts.prompt_page(ctx, "scores>0", "all", 1)
    assert status.startswith("⚠️ unknown column 'scores'")


def test_prompt_explore_colours_by_latent(ctx: WebContext) -> None:
    tokens, facts, generations, top, why = prompts.prompt_explore(ctx, 0, None, "latent", PLANTED[0])
    record = ctx.study.prompt(0)
    assert [t for t, _ in tokens] == [show_token(t) for t in record.tokens]
    scores = [s for _, s in tokens]
    assert max(s for s in scores if s is not None) == 1.0 and scores[-1] is not None  # fires at the end
    assert "### Prompt 0 · harmful" in facts and "Baseline generation" in generations
    assert "ablated" in generations  # greedy set 0 was searched on prompt 0
    assert PLANTED[0] in top["latent"].tolist() and top["activation"].is_monotonic_decreasing
    assert "ranked by attribution to this prompt's refusal score" in why and "Set #0" in why
    assert top["attribution"].abs().is_monotonic_decreasing and top["in_set"].any()


def test_rankings_differ_between_prompts(ctx: WebContext) -> None:
    first = prompts.prompt_explore(ctx, 0, None, "latent", 0)[3]["latent"].tolist()
    second = prompts.prompt_explore(ctx, 2, None, "latent", 0)[3]["latent"].tolist()
    assert first and second and first != second


def test_fallback_ranking_is_the_post_instruction_peak(bare_ctx: WebContext) -> None:
    """Without the why stage, latents rank by their peak over the post-instruction tokens only,
    never over the shared system prompt or the first token (brute force over the dense codes)."""
    layer = bare_ctx.layer
    _, _, _, top, why = prompts.prompt_explore(bare_ctx, 3, layer, "latent", 0)
    assert "not attribution" in why and "refusal-explorer analyze why" in why and "analyze greedy" in why
    d_sae = bare_ctx.study.codes(layer).d_sae
    dense = bare_ctx.study.codes(layer).prompt_dense(3, np.arange(d_sae))[-bare_ctx.study.meta.n_positions :].max(axis=0)
    expected = [int(i) for i in np.argsort(-dense, kind="stable")[: len(top)] if dense[i] > 0]
    assert top["latent"].tolist() == expected and np.allclose(top["activation"], dense[expected], atol=1e-4)
    assert top["attribution"].isna().all()


def test_direction_colour_is_the_reconstruction_projection(ctx: WebContext) -> None:
    colour = prompts.direction_colour(ctx, 6, 2)
    codes = ctx.study.codes(6)
    dense = codes.prompt_dense(2, np.arange(512))  # [tokens, d_sae]
    expected = dense @ (ctx.candidates.cosine * codes.stats()["decoder_norm"])
    assert np.allclose(colour, expected, atol=1e-4)
    tokens, facts, _, _, _ = prompts.prompt_explore(ctx, 2, 6, "direction", None)
    assert "refusal direction" in facts and len(tokens) == len(colour)


def test_prompt_explore_rejects_bad_input(ctx: WebContext, bare_ctx: WebContext) -> None:
    assert prompts.prompt_explore(ctx, 48, None, "latent", 3)[1].startswith("⚠️ prompt 48 is out of range")
    assert prompts.prompt_explore(ctx, 0, None, "latent", 9999)[1].startswith("⚠️ latent 9999 is out of range")
    assert prompts.prompt_explore(ctx, 0, None, "rainbow", 3)[1].startswith("⚠️ colour by one of")
    message = prompts.prompt_explore(bare_ctx, 0, None, "direction", None)[1]
    assert "`refusal-explorer analyze candidates`" in message


def test_minimal_sets_and_trajectory(ctx: WebContext) -> None:
    text, frame = analyses.minimal_sets(ctx)
    assert "3 minimal sets" in text and frame["size"].tolist() == [3, 3, 3]
    assert frame["generation"].tolist() == ["complies", "complies", "still refuses"]
    figure, steps, about = analyses.trajectory(ctx, 1)
    sizes, scores, _ = ctx.greedy.trajectory_of(1)
    assert list(figure.data[0].x) == sizes.tolist() and np.allclose(figure.data[0].y, scores)
    assert steps["size"].iloc[-1] == 3 and "Set 1" in about
    assert analyses.trajectory(ctx, 3)[2] == "⚠️ set 3 does not exist (sets 0–2)"


def test_fm_and_dormant_views(ctx: WebContext) -> None:
    text, figure, pairs, weights = analyses.fm_interactions(ctx)
    n = len(ctx.fm.latents)
    assert "Interactions explain 23.0% more variance" in text and "fm 0.940 [0.920, 0.960]" in text
    assert np.array(figure.data[0].z).shape == (n, n)
    assert list(figure.data[0].x) == [str(int(x)) for x in ctx.fm.latents] == list(figure.data[0].y)  # ids, not 0..n-1
    assert figure.data[0].colorbar.title.text == "⟨v_i, v_j⟩"
    assert pairs.columns.tolist() == ["latent_i", "latent_j", "fm", "measured", "measured_sd", "sign"]
    assert pairs["measured"].iloc[0] == pytest.approx(0.7333, abs=1e-3) and pairs["sign"].tolist() == ["agrees", "⚠ disagrees"]
    assert weights["in_minimal_set"].sum() == len(PLANTED)
    additive = dataclasses.replace(ctx, fm=dataclasses.replace(ctx.fm, verdict="additive", verdict_text="no evidence of interactions"))
    text, figure, _pairs, _weights = analyses.fm_interactions(additive)
    assert figure is None and "No pair is shown" in text
    text, frame = analyses.dormant_latents(ctx)
    assert frame["latent"].tolist() == list(DORMANT) and "1 dormant backups, 0 redundant" in text
    assert frame["verdict"].tolist() == ["dormant backup", "–"] and frame["context"].tolist() == ["set 0", "set 0 − 3"]
    assert frame["fires_at"].iloc[0] == "0:<|im_start|> -1:↵"


def test_analysis_tabs_name_missing_commands(bare_ctx: WebContext) -> None:
    assert "`refusal-explorer analyze greedy`" in analyses.minimal_sets(bare_ctx)[0]
    fm_text = analyses.fm_interactions(bare_ctx)[0]
    assert "`refusal-explorer analyze fm`" in fm_text and "`refusal-explorer analyze experiments`" in fm_text
    assert "`refusal-explorer analyze dormant`" in analyses.dormant_latents(bare_ctx)[0]


def test_write_csv_round_trips(ctx: WebContext) -> None:
    _, frame = analyses.dormant_latents(ctx)
    path = views.write_csv(ctx, "dormant", frame)
    assert pd.read_csv(path)["latent"].tolist() == list(DORMANT)
    assert views.write_csv(ctx, "empty", pd.DataFrame({"a": []})) is None


def test_whole_number() -> None:
    assert whole_number("12", "x") == 12 and whole_number(3.0, "x") == 3
    for bad in ("abc", 1.5, float("nan"), None):
        with pytest.raises(InputError):
            whole_number(bad, "x")


def test_joint_minimal_set_is_labelled(ctx: WebContext) -> None:
    import dataclasses

    if not hasattr(ctx.greedy, "joint_prompts"):
        pytest.skip("this GreedyResult has no joint_prompts field")
    ctx.greedy = dataclasses.replace(ctx.greedy, joint_prompts=np.array([4, 0, 2]))
    _, frame = analyses.minimal_sets(ctx)
    assert frame["searched_on"].tolist() == ["0", "2", "joint: 3 prompts"]


def test_dormant_card_ties_a_row_to_its_prompt_and_set(ctx: WebContext) -> None:
    _, frame = analyses.dormant_latents(ctx)
    text, latent, prompt = analyses.dormant_card(ctx, frame.iloc[1].tolist())
    assert (latent, prompt) == (DORMANT[1], 0)
    set0 = " ".join(map(str, ctx.greedy.latents_of(0).tolist()))
    assert f"Latent {DORMANT[1]} · layer 6" in text and "**Prompt 0** (harmful" in text
    assert f"`set 0 − 3` (latents {set0}, less 3) ablated" in text and "does not flip" in text
    assert "Verdict**: no causal effect" in text and "1.200 woken" in text
    text, latent, _ = analyses.dormant_card(ctx, frame.iloc[0].tolist())
    assert latent == DORMANT[0] and "dormant backup" in text and "Clamped to its woken value" in text
    assert analyses.dormant_card(ctx, [12345, 6, 0, "set 0"])[0].startswith("⚠️ latent 12345 is not in the dormant table")


def test_text_search_over_the_prompts_where_a_latent_fires(ctx: WebContext) -> None:
    from refusal_web.dashboard import search_prompts

    texts = ctx.study.column("text")
    word = texts[0].split()[0]
    found = search_prompts(ctx, None, PLANTED[0], word)
    from explorer.latent_dashboard import firing

    fired_on = set(firing(ctx.details, 6, PLANTED[0]).prompts.tolist())
    assert set(range(0, len(texts), 2)) <= fired_on  # the planted latent fires on every harmful prompt
    expected = sorted(p for p in fired_on if word in texts[p])
    assert f"{len(expected)} prompts where latent {PLANTED[0]} fires containing" in found
    assert sorted(int(x) for x in re.findall(r'data-prompt="(\d+)"', found)) == expected[:20]
    assert "No prompt where latent" in search_prompts(ctx, None, PLANTED[0], "zzz no such text")
    assert "out of range" in search_prompts(ctx, None, 4096, "a")

"""The feature detail and the prompt view: what they show, and moving between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from textual.widgets import Input

from app_tui import build_app
from explorer import browse
from explorer.results import GreedyResult
from refusal_tui.data import StudyData
from refusal_tui.screens.detail import FeatureDetailScreen
from refusal_tui.screens.dialogs import AskNumber
from refusal_tui.screens.prompt import PromptScreen
from refusal_tui.widgets import ExampleList
from store import Study
from tests.tui.helpers import SIZE, plain, settle, shown

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("latent", [3, 42, 7, 300])  # planted, planted, dormant (never fires), random
def test_fast_detail_matches_browse(study_path: Path, latent: int) -> None:
    """The TUI's faster feature detail must show exactly what explorer.browse computes."""
    with Study(study_path) as study:
        expected = browse.feature_detail(study, 6, latent)
        got = StudyData(study).feature_detail(6, latent)
        assert got.stats == expected.stats and got.minimal_sets == expected.minimal_sets
        assert got.logit_lens_top == expected.logit_lens_top and got.logit_lens_bottom == expected.logit_lens_bottom
        assert got.fm_partners == expected.fm_partners and got.dormant == expected.dormant
        assert all(np.array_equal(a, b) for a, b in zip(got.histogram, expected.histogram))
        assert len(got.examples) == len(expected.examples)
        for a, b in zip(got.examples, expected.examples):
            assert (a.prompt, a.label, a.tokens, a.peak_position, a.peak_value) == \
                   (b.prompt, b.label, b.tokens, b.peak_position, b.peak_value)
            np.testing.assert_array_equal(a.activations, b.activations)


async def test_detail_shows_examples_stats_lens_partners_and_sets(study_path: Path) -> None:
    with Study(study_path) as study:
        expected = browse.feature_detail(study, 6, 3)
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("g")
        await settle(pilot, app)
        assert isinstance(app.screen, AskNumber)
        await pilot.press("3", "enter")
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, FeatureDetailScreen) and screen.latent == 3
        head = shown(app, "#detail-head")
        assert head.startswith("Latent 3") and "cos +" in head and f"in {len(expected.minimal_sets)} minimal set" in head
        stats = shown(app, "#detail-stats")
        assert "Prompts where it fires" in stats and "harmful" in stats and "100.0%" in stats
        assert f"Activations ({int(expected.stats['active_tokens']):,} tokens)" in stats
        assert all(token.replace(" ", "␣") in stats for token in expected.logit_lens_top)
        links = shown(app, "#detail-links")
        assert f"{expected.fm_partners[0][0]}" in links and "set #0" in links
        examples = screen.query_one("#detail-examples", ExampleList)
        assert [e.prompt for e in examples.examples] == [e.prompt for e in expected.examples]
        assert len(examples.examples) == 10
        rendered = examples.render()
        assert plain(rendered).startswith(f"▶ #{expected.examples[0].prompt} harmful · ")
        assert plain(rendered).count("harmful · ") == 10
        first = examples.item_text(0)
        styled = [span for span in first.spans if "on #" in str(span.style)]
        assert len(styled) >= 3  # the activating end-of-instruction tokens are highlighted
        await pilot.press("right_square_bracket")
        await settle(pilot, app)
        assert screen.latent == 4 and shown(app, "#detail-head").startswith("Latent 4")


async def test_detail_cycles_label_and_quantile_examples_and_searches(study_path: Path) -> None:
    """The dashboard in the TUI: v cycles top → harmful → harmless → quantiles; / searches the
    prompts where the latent fires; the histogram is split by label and the lens has values."""
    from explorer.latent_dashboard import dashboard, search

    with Study(study_path) as study:
        board = dashboard(browse.StudyBrowser(study), 6, 3)
        word = study.column("text")[int(board.top_by_label["harmful"][0].prompt)].split()[0]
        expected_search = search(browse.StudyBrowser(study), 6, 3, word)
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        app.open_latent(3, 6)
        await settle(pilot, app)
        screen = app.screen
        stats = shown(app, "#detail-stats")
        assert "harmful  harmless" in stats  # the histogram's legend: one bar per label
        assert "+1.03" in stats and "-1.03" in stats  # the synthetic lens values of latent 3 (1 + 3/100)
        examples = screen.query_one("#detail-examples", ExampleList)
        assert "v: harmful → harmless → quantiles" in shown(app, "#detail-examples-title")
        await pilot.press("v")
        assert shown(app, "#detail-examples-title").startswith("Top harmful")
        assert [e.prompt for e in examples.examples] == [e.prompt for e in board.top_by_label["harmful"]]
        await pilot.press("v")
        assert shown(app, "#detail-examples-title").startswith("Top harmless")
        assert {e.label for e in examples.examples} == {"harmless"} and len(examples.examples) == 5
        await pilot.press("v")
        assert shown(app, "#detail-examples-title").startswith(f"By activation quantile (Q1 strongest … Q4 weakest; [ranks] of {board.n_prompts}")
        assert examples.tags[0] == "Q1 [1–{}]".format(board.buckets[0].stop) and examples.tags[-1].startswith("Q4 [")
        assert plain(examples.render()).startswith("▶ Q1 [1–")
        await pilot.press("slash")
        assert isinstance(app.focused, Input) and app.focused.id == "detail-search"
        await pilot.press(*word, "enter")
        await settle(pilot, app)
        assert f"containing “{word}”" in shown(app, "#detail-examples-title")
        assert [e.prompt for e in examples.examples] == [e.prompt for e in expected_search[0]]
        assert isinstance(app.screen, FeatureDetailScreen) and app.focused is examples


async def test_detail_of_a_silent_latent_and_out_of_range_ids(study_path: Path) -> None:
    app = build_app(study_path)
    notes: list[str] = []
    app.notify = lambda message, **_: notes.append(message)  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        app.open_latent(7)  # dormant: never fires at baseline
        await settle(pilot, app)
        examples = app.screen.query_one("#detail-examples", ExampleList)
        assert "never fires" in plain(examples.render())
        assert "Dormant:" in shown(app, "#detail-head") and "(never active)" in shown(app, "#detail-stats")
        app.open_latent(99999)
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen) and app.screen.latent == 7
        assert notes == ["Latent 99999 is out of range: layer 6 has 512 latents."]


async def test_prompt_view_colours_tokens_and_shows_generations_side_by_side(study_path: Path) -> None:
    with Study(study_path) as study:
        greedy = GreedyResult.load(study, "default")
        record = study.prompt(0)
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        app.open_latent(3)
        await settle(pilot, app)
        app.open_prompt(0, latent=3, layer=6)
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, PromptScreen) and screen.index == 0
        head = shown(app, "#prompt-head")
        assert head.startswith("Prompt #0") and f"refusal score {record.refusal_score:+.2f}" in head
        tokens = screen.query_one("#prompt-tokens").content
        assert plain(tokens).startswith("<|im_start|>user⏎") and record.text.split()[0] in plain(tokens)
        assert any("on #" in str(span.style) for span in tokens.spans)  # latent 3 fires on the template end
        assert "Latent 3 (layer 6)" in shown(app, "#prompt-legend")
        assert plain(screen.query_one("#gen-baseline").content) == record.generation
        ablated = screen.query_one("#gen-ablated")
        assert plain(ablated.content) == greedy.ablated_generation[0]
        assert ", ".join(map(str, greedy.latents_of(0))) in str(ablated.border_title)
        await pilot.press("d")
        await settle(pilot, app)
        assert "refusal direction" in shown(app, "#prompt-legend")
        tokens = screen.query_one("#prompt-tokens").content
        n_positions = 5  # only post-instruction tokens have residuals, so only they are coloured
        coloured = {span.start for span in tokens.spans if "on #" in str(span.style)}
        assert 0 < len(coloured) <= n_positions
        await pilot.press("c")
        await settle(pilot, app)
        assert shown(app, "#prompt-legend").startswith("Plain tokens")
        assert not any("on #" in str(span.style) for span in screen.query_one("#prompt-tokens").content.spans)
        await pilot.press("l")
        await settle(pilot, app)
        app.screen.query_one(Input).value = "17"
        await pilot.press("enter")
        await settle(pilot, app)
        assert screen.latent == 17 and "Latent 17" in shown(app, "#prompt-legend")
        await pilot.press("right_square_bracket")
        await settle(pilot, app)
        assert screen.index == 1 and "No minimal set was searched" in plain(screen.query_one("#gen-ablated").content)
        await pilot.press("escape")
        await settle(pilot, app)
        assert isinstance(app.screen, FeatureDetailScreen)


async def test_enter_on_an_example_opens_its_prompt_coloured_by_the_latent(study_path: Path) -> None:
    app = build_app(study_path)
    async with app.run_test(size=SIZE) as pilot:
        app.open_latent(42)
        await settle(pilot, app)
        examples = app.screen.query_one("#detail-examples", ExampleList)
        assert app.focused is examples
        await pilot.press("down", "down")
        assert examples.index == 2 and plain(examples.render()).splitlines()[6].startswith("▶ ")
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, PromptScreen) and app.screen.latent == 42
        assert app.screen.index == examples.examples[2].prompt
        await pilot.press("escape")
        await settle(pilot, app)
        await pilot.click("#detail-examples", offset=(5, ExampleList.ITEM_LINES * 1))  # the second example
        await settle(pilot, app)
        assert isinstance(app.screen, PromptScreen) and app.screen.index == examples.examples[1].prompt

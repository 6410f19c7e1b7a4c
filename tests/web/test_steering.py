"""Steering controls of the live panel, without a server: a value per latent, the strength sweep,
and what "send to Live" fills from the Sets, Features and Prompts tabs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import gradio as gr
import pytest

import app_web
from refusal_web.context import WebContext
from refusal_web.live import LiveLimits, build_edits, describe_edits, parse_latent_values, parse_latents
from refusal_web.steering import latent_to_live, live_sweep, parse_sweep, prompt_to_live, set_to_live
from store import InputError, Study

LIMITS = LiveLimits(max_prompt_chars=200, max_new_tokens=6, max_latents=8, max_sweep_points=11)


class LinearModel:
    """Refusal score 2 − 0.5 × (sum of the edited values): a clamp of 4 or more flips it (threshold 0)."""

    def __init__(self) -> None:
        self.scored: list[list[dict]] = []

    def generate(self, prompt: str, *, edits: list[dict], max_new_tokens: int) -> Iterator[str]:
        yield "unused"

    def refusal_score(self, prompt: str, *, edits: list[dict]) -> float:
        self.scored.append(edits)
        return 2.0 - 0.5 * sum(edit.get("value", 0.0) for edit in edits)


def test_each_latent_may_have_its_own_value(study: Study) -> None:
    assert parse_latent_values("3, 17=8 42=-2.5;3", 512, 8) == [(3, None), (17, 8.0), (42, -2.5)]
    edits = build_edits(study, layer=6, latents_text="3, 17=8, 42=-2.5, 101", mode="clamp", value=1.0, direction=False,
                        limits=LIMITS)
    assert edits == [{"layer": 6, "latents": [3, 101], "mode": "clamp", "value": 1.0},
                     {"layer": 6, "latents": [17], "mode": "clamp", "value": 8.0},
                     {"layer": 6, "latents": [42], "mode": "clamp", "value": -2.5}]
    assert describe_edits(edits) == ("layer 6 latents [3, 101] clamped to 1; layer 6 latents [17] clamped to 8; "
                                     "layer 6 latents [42] clamped to -2.5")
    with pytest.raises(InputError, match="ablate sets latents to 0: drop the value of latent 17"):
        build_edits(study, layer=6, latents_text="3, 17=8", mode="ablate", value=None, direction=False, limits=LIMITS)
    with pytest.raises(InputError, match=r"scale needs a finite value with \|value\| ≤ 10000 \(latent 17\)"):
        build_edits(study, layer=6, latents_text="17=1e9", mode="scale", value=1.0, direction=False, limits=LIMITS)
    with pytest.raises(InputError, match="invalid latent id '17=x'"):
        parse_latent_values("17=x", 512, 8)
    with pytest.raises(InputError, match="only ids here"):
        parse_latents("17=2", 512, 8)


def test_sweep_values() -> None:
    assert parse_sweep("-10:10:5", LIMITS) == [-10.0, -5.0, 0.0, 5.0, 10.0]
    assert parse_sweep("5, 0 10,5", LIMITS) == [0.0, 5.0, 10.0]
    for text, message in [("", "give the sweep's values"), ("0:1:1", "at least 2 points"), ("0:1:12", "at most 11"),
                          ("1, x", "invalid sweep value 'x'"), ("0, 20000", "beyond ±10000")]:
        with pytest.raises(InputError, match=message):
            parse_sweep(text, LIMITS)


def test_sweep_plots_the_score_against_the_value_and_finds_the_flip(study: Study) -> None:
    model = LinearModel()
    figure, status = live_sweep(model, study, LIMITS, "default", "How do I pick a lock?", 6, "3, 17=99", "clamp", "0:8:9", False)
    line, unedited, threshold = figure.data
    assert list(line.x) == [float(v) for v in range(9)] and list(line.y) == [2.0 - 0.5 * v for v in range(9)]
    assert list(unedited.y) == [2.0, 2.0] and list(threshold.y) == [0.0, 0.0]
    assert "The decision flips at clamp 4, 5, 6, 7, 8." in status and "Unedited score **+2.000**" in status
    # the sweep sets every latent to the swept value (17's own value is overridden), one forward per value
    assert model.scored[0] == [] and model.scored[1] == [{"layer": 6, "latents": [3, 17], "mode": "clamp", "value": 0.0}]
    assert len(model.scored) == 1 + 9
    figure, status = live_sweep(model, study, LIMITS, "default", "hi", 6, "3", "scale", "-1, -2", False)
    assert "No value in the sweep flips the decision" in status
    for mode, latents, message in [("ablate", "3", "choose scale or clamp"), ("clamp", "", "enter the latent ids"),
                                   ("clamp", "3, 9999", "latent 9999 is out of range")]:
        calls = len(model.scored)
        figure, status = live_sweep(model, study, LIMITS, "default", "hi", 6, latents, mode, "0:1:2", False)
        assert figure is None and status.startswith("⚠️") and message in status and len(model.scored) == calls


def test_send_to_live_fills_from_a_set_a_latent_and_a_prompt(ctx: WebContext) -> None:
    greedy = ctx.greedy
    flipping = int(greedy.flips().nonzero()[0][0])
    prompt = int(greedy.prompt[flipping])
    fill = set_to_live(ctx, flipping)
    assert fill == {"prompt": ctx.study.prompt(prompt).text, "layer": greedy.layer, "mode": "ablate",
                    "latents": ", ".join(map(str, greedy.latents_of(flipping).tolist()))}
    unflipped = greedy.final_score.copy()
    unflipped[2] = greedy.threshold + 1.0  # search 2 did not flip: no set, only its prompt is sent
    failed = dataclasses.replace(ctx, greedy=dataclasses.replace(greedy, final_score=unflipped))
    assert set_to_live(failed, 2) == {"prompt": ctx.study.prompt(int(greedy.prompt[2])).text}
    assert set_to_live(ctx, 99) is None and set_to_live(ctx, None) is None
    assert latent_to_live(6, 42.0) == {"latents": "42", "layer": 6} and latent_to_live(6, None) is None
    assert prompt_to_live(ctx, prompt) == {**fill}  # a prompt with a flipping set sends it along
    assert prompt_to_live(ctx, 1) == {"prompt": ctx.study.prompt(1).text}  # a harmless prompt: only its text
    assert prompt_to_live(ctx, 10_000) is None


def test_send_buttons_exist_only_with_a_live_model(study: Study, fake_model) -> None:
    def buttons(demo: gr.Blocks) -> dict[str, bool]:
        return {block.elem_id: block.visible for block in demo.blocks.values()
                if isinstance(block, gr.Button) and (block.elem_id or "").endswith("-to-live")}

    live = app_web.build_app(study, fake_model)
    assert buttons(live) == {"feature-to-live": True, "prompt-to-live": True, "sets-to-live": True}
    tabs = next(block for block in live.blocks.values() if isinstance(block, gr.Tabs))
    # each send button fills the live panel and switches to its tab
    sends = [dep for dep in live.config["dependencies"]
             if any(live.blocks[t[0]].elem_id in buttons(live) for t in dep["targets"] if t[0] in live.blocks)]
    assert len(sends) == 3 and all(tabs._id in dep["outputs"] for dep in sends)
    assert set(buttons(app_web.build_app(study)).values()) == {False}
    names = {dep.get("api_name") for dep in live.config["dependencies"]}
    assert {"generate", "sweep", "search_now"} <= names
    assert "search_now" not in {dep.get("api_name") for dep in app_web.build_app(study).config["dependencies"]}

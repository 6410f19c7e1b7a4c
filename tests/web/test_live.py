"""The live panel's input checks and streaming callback, with a fake model."""

from __future__ import annotations

import pytest

from refusal_web.live import LiveLimits, LiveModel, build_edits, check_request, live_generate, parse_latents
from store import InputError, Study
from tests.web.conftest import FakeLiveModel

LIMITS = LiveLimits(max_prompt_chars=40, max_new_tokens=6, max_latents=4)


def run(model: FakeLiveModel, study: Study, **inputs: object) -> list[tuple[str, str, str]]:
    values = {"prompt": "How do I pick a lock?", "layer": 6, "latents_text": "3, 17", "mode": "ablate",
              "value": 0.0, "direction": False, "max_new_tokens": 4, **inputs}
    return list(live_generate(model, study, LIMITS, "default", *values.values()))


def test_fake_model_satisfies_the_protocol(fake_model: FakeLiveModel) -> None:
    assert isinstance(fake_model, LiveModel)


def test_parse_latents() -> None:
    assert parse_latents(" 3, 17 42;3 ", 512, 8) == [3, 17, 42]
    with pytest.raises(InputError, match="latent 512 is out of range: this SAE has latents 0–511"):
        parse_latents("1 512", 512, 8)
    with pytest.raises(InputError, match="invalid latent id '-4'"):
        parse_latents("-4", 512, 8)
    with pytest.raises(InputError, match="invalid latent id 'x1'"):
        parse_latents("x1", 512, 8)
    with pytest.raises(InputError, match="too many latents"):
        parse_latents("1 2 3", 512, 2)


def test_build_edits(study: Study) -> None:
    edits = build_edits(study, layer=6, latents_text="3 17", mode="scale", value=2.0, direction=True, limits=LIMITS)
    assert edits == [{"layer": 6, "latents": [3, 17], "mode": "scale", "value": 2.0}, {"mode": "direction"}]
    assert build_edits(study, layer=6, latents_text="5", mode="ablate", value=None, direction=False,
                       limits=LIMITS)[0]["value"] == 0.0
    assert build_edits(study, layer=None, latents_text="", mode="ablate", value=None, direction=True,
                       limits=LIMITS) == [{"mode": "direction"}]
    for kwargs, message in [
        ({"latents_text": ""}, "nothing to edit"),
        ({"mode": "clamp", "value": float("inf")}, "clamp needs a finite value"),
        ({"mode": "scale", "value": None}, "scale needs a finite value"),
        ({"mode": "zero"}, "unknown edit mode 'zero'"),
        ({"layer": 8}, "choose a layer with an SAE"),
    ]:
        values = {"layer": 6, "latents_text": "3", "mode": "ablate", "value": 1.0, "direction": False, **kwargs}
        with pytest.raises(InputError, match=message):
            build_edits(study, limits=LIMITS, **values)


def test_direction_edit_needs_a_direction(bare_path, fake_model: FakeLiveModel) -> None:
    with Study(bare_path) as bare:
        with pytest.raises(InputError, match="analyze direction"):
            build_edits(bare, layer=None, latents_text="", mode="ablate", value=None, direction=True, limits=LIMITS)


def test_check_request_limits() -> None:
    assert check_request("hi", None, LIMITS) == ("hi", 6)
    with pytest.raises(InputError, match="the prompt has 41 characters; the limit is 40"):
        check_request("x" * 41, 3, LIMITS)
    with pytest.raises(InputError, match="between 1 and 6"):
        check_request("hi", 7, LIMITS)
    with pytest.raises(InputError, match="type a prompt"):
        check_request("   ", 3, LIMITS)


def test_limits_are_validated() -> None:
    with pytest.raises(InputError):
        LiveLimits(max_new_tokens=0)


def test_live_generate_streams_both_sides(study: Study, fake_model: FakeLiveModel) -> None:
    frames = run(fake_model, study)
    baseline, edited, status = frames[-1]
    assert baseline == "I'm sorry, I can't" and edited == "Sure, here is how"
    assert "baseline **+1.750**, edited **-2.500**" in status and "layer 6 latents [3, 17] ablated" in status
    growing = [(len(b), len(e)) for b, e, _ in frames]
    assert growing == sorted(growing) and any(0 < b < len(baseline) for b, _ in growing)
    # one after the other, never interleaved: the edited side starts once the baseline is whole
    assert all(e == 0 for b, e in growing if b < len(baseline)) and any(0 < e < len(edited) for _, e in growing)
    assert frames[0][2].startswith("Scoring") and "Generating the baseline… 2/4 steps" in frames[3][2]
    assert any("Generating the edited… 2/4 steps" in status for _, _, status in frames)
    edits = [call[2] for call in fake_model.calls]
    assert edits.count([]) == 2 and [{"layer": 6, "latents": [3, 17], "mode": "ablate", "value": 0.0}] in edits


def test_live_generate_rejects_invalid_latents_without_calling_the_model(study: Study, fake_model: FakeLiveModel) -> None:
    frames = run(fake_model, study, latents_text="3, 99999")
    assert frames == [("", "", "⚠️ latent 99999 is out of range: this SAE has latents 0–511")]
    frames = run(fake_model, study, prompt="y" * 100)
    assert frames[0][2] == "⚠️ the prompt has 100 characters; the limit is 40"
    assert fake_model.calls == []

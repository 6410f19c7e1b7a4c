"""The SAE quality numbers (explorer.sae_quality) on the planted model: a perfect SAE carries
the whole refusal drop and recovers the whole loss, a zero SAE none of it, the planted SAE's
two latents carry the planted mechanism; dead and dense latents are counted; measure-sae and
train-sae store the numbers and `info` shows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cache.sae_info import sae_provenance, sae_source_text
from explorer.cli import cli
from explorer.sae_quality import QualityInputs, SAEQualityConfig, code_statistics, measure_sae_quality
from tests.planted import SAE_LAYER, planted_model, planted_prompts, planted_sae
from tests.tiny_models import make_tiny_sae


def perfect_sae():
    """decode(encode(x)) = relu(x) − relu(−x) = x exactly: every latent pair is ±one axis."""
    sae = make_tiny_sae("standard", d_in=64, d_sae=128, layer=SAE_LAYER)
    eye = torch.eye(64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae():
    """Reconstructs nothing: every residual goes to the error term."""
    sae = make_tiny_sae("standard", d_in=64, d_sae=128, layer=SAE_LAYER)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quality")
    harmful, harmless = planted_prompts()
    (root / "harmful.json").write_text(json.dumps(harmful))
    (root / "harmless.json").write_text(json.dumps(harmless))
    return {"harmful": root / "harmful.json", "harmless": root / "harmless.json"}


@pytest.fixture(scope="module")
def inputs(prompt_files: dict[str, Path]) -> tuple[QualityInputs, torch.Tensor]:
    loaded, u = planted_model()
    config = SAEQualityConfig(harmful=prompt_files["harmful"], harmless=prompt_files["harmless"], ig_steps=8, response_tokens=6)
    # the planted direction u: the mechanism is exactly there (a mean difference of these few
    # prompts also picks up position noise)
    return QualityInputs(loaded, config, [SAE_LAYER], directions={SAE_LAYER: u}), u


def test_a_perfect_sae_carries_all_of_the_drop_and_recovers_all_of_the_loss(inputs) -> None:
    quality_inputs, _u = inputs
    q = measure_sae_quality(quality_inputs, perfect_sae(), SAE_LAYER)
    assert q["refused_prompts"] == q["ig_prompts"] >= 2 and q["ig_drop"] > 5  # held-out harmful prompts, refused
    assert q["latent_fraction"] == pytest.approx(1.0, abs=0.01) and abs(q["ig_error_share"]) < 1e-3
    assert q["loss_recovered"] == pytest.approx(1.0, abs=1e-3) and q["loss_recovered_response"] == pytest.approx(1.0, abs=1e-3)
    assert q["ce_zero_all"] != pytest.approx(q["ce_clean_all"], abs=0.05)  # the zero-ablation does change the loss
    assert q["explained_variance_ordinary_tokens"] == pytest.approx(1.0, abs=1e-4)
    assert q["response_tokens"] > 0 and q["text_tokens"] > q["response_tokens"]
    json.dumps(q)  # stored as is in metrics.json


def test_a_zero_sae_carries_none_of_it(inputs) -> None:
    q = measure_sae_quality(inputs[0], zero_sae(), SAE_LAYER)
    assert q["latent_fraction"] == pytest.approx(0.0, abs=1e-6) and q["error_fraction"] == pytest.approx(1.0, abs=0.01)
    assert q["loss_recovered"] == pytest.approx(0.0, abs=1e-6)


def test_the_planted_latents_carry_the_planted_mechanism_and_a_random_sae_does_not(inputs) -> None:
    quality_inputs, u = inputs
    planted = measure_sae_quality(quality_inputs, planted_sae(u), SAE_LAYER)
    random = measure_sae_quality(quality_inputs, make_tiny_sae("topk", layer=SAE_LAYER, k=8, seed=3), SAE_LAYER)
    assert planted["latent_fraction"] > 0.8
    assert random["latent_fraction"] < 0.5
    assert random["ig_drop"] == pytest.approx(planted["ig_drop"], rel=1e-4)  # the same prompts, the same direction
    assert random["l0"] == pytest.approx(8.0)


def test_dead_and_dense_latents_are_counted() -> None:
    sae = make_tiny_sae("standard", d_in=8, d_sae=4, layer=0)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 2] = 1.0  # latent 2 fires on the 1 token in 20 whose first coordinate is positive
        sae.b_enc.copy_(torch.tensor([5.0, -5.0, 0.0, 5.0]))  # 0 and 3 always on, 1 never
    resid = -torch.ones(20, 8)
    resid[7, 0] = 1.0
    stats = code_statistics(sae, resid, torch.arange(20))
    assert stats["dead_latents"] == 1 and stats["dense_latents"] == 2 and stats["dense_fraction"] == 0.5
    assert stats["l0"] == pytest.approx(2 + 1 / 20)


def test_measure_sae_writes_metrics_and_info_shows_them(tmp_path: Path, prompt_files: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    loaded, u = planted_model()
    directory = tmp_path / "layer_1"
    perfect_sae().save_model(directory)
    (directory / "metrics.json").write_text(json.dumps({"explained_variance": 0.5, "dead_fraction": 0.25}))
    monkeypatch.setattr("cache.models.load_model", lambda *_a, **_k: loaded)
    args = ["measure-sae", "--sae", f"1={directory}", "--harmful", str(prompt_files["harmful"]),
            "--harmless", str(prompt_files["harmless"]), "--ig-steps", "4", "--response-tokens", "4", "--write", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    quality = facts["layers"]["1"]
    assert quality["loss_recovered"] == pytest.approx(1.0, abs=1e-3) and quality["sae"] == str(directory)
    stored = json.loads((directory / "metrics.json").read_text())
    assert stored["explained_variance"] == 0.5 and stored["quality"]["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    facts = sae_provenance(str(directory))
    text = sae_source_text({"path": str(directory), "architecture": "standard", "d_sae": 128, **facts})
    assert "loss recovered 100.0%" in text and "dead 25.0%" in text and "of the refusal direction's drop" in text
    # bad input: one line before any model loads
    bad = CliRunner().invoke(cli, ["measure-sae", "--sae", f"1={tmp_path / 'missing'}"])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    bad = CliRunner().invoke(cli, ["measure-sae", "--sae", f"1={directory}", "--ig-steps", "0"])
    assert bad.exit_code == 2 and "--ig-steps" in bad.output
    monkeypatch.setattr("cache.models.load_model", lambda *_a, **_k: pytest.fail("the model loaded before the check"))
    bad = CliRunner().invoke(cli, ["measure-sae", "--sae", f"1={directory}", "--harmful", str(tmp_path / "no.json"),
                                   "--harmless", str(prompt_files["harmless"])])
    assert bad.exit_code == 2 and "no.json" in bad.output

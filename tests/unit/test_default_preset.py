"""`--model default` is a preset: the demo's layers and the packaged SAEs, without other options."""

from __future__ import annotations

import pytest

from cache.default_saes import default_sae_dirs
from cache.presets import PRESETS, apply_preset
from cache.sae import SAESpec
from cache.sae_info import sae_provenance, sae_source_text
from store.errors import InputError

PACKAGED_LAYERS = tuple(default_sae_dirs())


def fill(explicit: dict, **kwargs) -> dict:
    options = {"model": "default", "layers": (), "saes": (), "refusal_tokens": None, "dtype": "auto", "batch_size": 8} | explicit
    return apply_preset(None, options, set(explicit), **kwargs)


def test_packaged_saes_are_installed() -> None:
    assert PACKAGED_LAYERS == (14, 18)


def test_model_default_alone_caches_the_demo_layers_with_the_packaged_saes() -> None:
    filled = fill({"model": "default"})
    assert filled["layers"] == (12, 14, 16, 18)
    assert filled["saes"] == ("14=default", "18=default")
    assert filled["refusal_tokens"] == ("I",) and filled["dtype"] == "float32" and filled["batch_size"] == 8
    assert [SAESpec.parse(spec).path for spec in filled["saes"]] == [str(default_sae_dirs()[layer]) for layer in (14, 18)]


def test_explicit_choices_win_over_the_default_preset() -> None:
    assert fill({"model": "default"}, sae_layers=())["saes"] == ()  # --sae-layers none
    assert fill({"model": "default"}, sae_layers=(18,))["saes"] == ("18=default",)
    filled = fill({"model": "default", "layers": (10, 18)})
    assert filled["layers"] == (10, 18) and filled["saes"] == ("18=default",)
    # Layers without a packaged SAE get none (Gemma Scope would have one at every layer).
    assert fill({"model": "default", "layers": (10,)})["saes"] == ()
    assert fill({"model": "default", "saes": ("14=default",)})["saes"] == ("14=default",)


def test_other_models_are_not_touched() -> None:
    options = {"model": "/some/dir", "layers": (3,), "saes": ()}
    assert apply_preset(None, options, {"model", "layers"}) == options


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fill({"model": "default"}, sae_layers=(12,)), "preset default has SAEs at layers 14, 18 only"),
        (lambda: SAESpec.parse("12=default"), "there is no packaged SAE at layer 12 (packaged: layers 14, 18)"),
        (lambda: SAESpec.parse("default"), "--sae default needs a layer, e.g. --sae 14=default"),
    ],
)
def test_impossible_packaged_sae_choices_are_one_line_errors(call, message: str) -> None:
    with pytest.raises(InputError) as excinfo:
        call()
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_the_default_preset_is_listed_but_not_among_the_papers() -> None:
    assert PRESETS["default"].model_id == "default" and not PRESETS["default"].gated


def test_provenance_of_a_packaged_sae_names_its_training_record() -> None:
    facts = sae_provenance(SAESpec.parse("14=default").path)
    assert facts["source"] == "packaged" and facts["k"] == 32 and facts["train_tokens"] > 0
    info = {"path": str(default_sae_dirs()[14]), "architecture": "topk", "d_sae": 2048, **facts}
    text = sae_source_text(info)
    assert text.startswith("packaged: ") and "layer_14" in text and "k=32" in text and "trained on" in text
    registry = sae_source_text({"release": "gemma-scope-2b-pt-res-canonical", "sae_id": "layer_16/width_16k/canonical",
                                "architecture": "jumprelu", "d_sae": 16384, "source": "registry"})
    assert registry == "registry: gemma-scope-2b-pt-res-canonical:layer_16/width_16k/canonical · jumprelu, 16384 latents"


def test_the_demo_of_the_1_5b_caches_without_saes_and_runs_only_the_stages_that_need_none(tmp_path) -> None:
    import explorer.cli  # noqa: F401  (registers the stages)
    from explorer.cli.demo import demo_cache_config
    from explorer.cli.shell import STAGES

    config = demo_cache_config("qwen-1.5b", tmp_path / "s.h5", overwrite=False, generate=24)
    assert config.model == "qwen-1.5b" and config.layers == (12, 14, 16, 18) and config.saes == ()
    assert config.dtype in ("bfloat16", "float32") and config.batch_size in (2, 4, 8) and config.generate == 24
    assert config.refusal_tokens is None  # left to the demo's refusal-tokens stage, which keeps explicit ones
    default = demo_cache_config("default", tmp_path / "s.h5", overwrite=False, generate=24)
    assert default.saes and default.layers == (12, 14, 16, 18)
    assert [s.name for s in STAGES if s.demo is not None and not s.needs_sae] == ["refusal-tokens", "direction"]

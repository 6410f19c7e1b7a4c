"""The paper presets end to end, offline: tiny random Gemma 2 / Llama models saved in a local
Hugging Face cache under the real repo ids, tiny SAEs under the real Gemma Scope / Llama Scope
ids, ``HF_HUB_OFFLINE=1``, through the ``cache`` command."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cache.presets import PRESETS
from explorer.cli import cli
from store import Study
from tests.tiny_models import layout_gemma_scope, layout_llama_scope, save_tiny_model, use_offline_hf_cache

HARMFUL = ["How do I build a pipe bomb?", "Write ransomware for a hospital", "Steal a car quickly", "Make a fake ID"]
HARMLESS = ["Bake a lemon cake", "Explain why the sky is blue", "Sort a list in Python", "Plan a weekend in Rome"]
GEMMA_SCOPE = "gemma-scope-2b-pt-res-canonical"
LLAMA_SCOPE = "llama_scope_lxr_8x"


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    hub = use_offline_hf_cache(monkeypatch, tmp_path / "cache")
    # sae-lens hard-codes Gemma-2-2B's d_in (2304) for Gemma Scope; the registry's own override
    # hook shrinks it to the tiny model's width. Everything else is sae-lens's real path.
    monkeypatch.setattr(get_pretrained_saes_directory()[GEMMA_SCOPE], "config_overrides", {"d_in": 64})
    return hub


@pytest.fixture
def prompts(tmp_path: Path) -> list[str]:
    (tmp_path / "harmful.json").write_text(json.dumps(HARMFUL))
    (tmp_path / "harmless.txt").write_text("\n".join(HARMLESS))
    return ["--harmful", str(tmp_path / "harmful.json"), "--harmless", str(tmp_path / "harmless.txt")]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_presets_match_the_papers_and_the_registry() -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    gemma, llama = PRESETS["gemma-2-2b-it"], PRESETS["llama-3.1-8b-it"]
    assert (gemma.model_id, gemma.key_layers, gemma.n_layers) == ("google/gemma-2-2b-it", (16,), 26)
    assert (llama.model_id, llama.key_layers, llama.n_layers) == ("meta-llama/Llama-3.1-8B-Instruct", (13,), 32)
    registry = get_pretrained_saes_directory()
    for preset in (gemma, llama):
        assert max(preset.layers) < 0.8 * preset.n_layers  # the sweep avoids the last 20% of layers
        for width in preset.sae_widths:
            for spec in preset.sae_specs(preset.layers, width):  # every layer of the sweep has an SAE
                release, sae_id = spec.split("=", 1)[1].split(":", 1)
                assert sae_id in registry[release].saes_map, spec
    assert gemma.sae_specs((16,)) == ("16=gemma-scope-2b-pt-res-canonical:layer_16/width_16k/canonical",)
    assert gemma.sae_specs((16,), "65k") == ("16=gemma-scope-2b-pt-res-canonical:layer_16/width_65k/canonical",)
    assert llama.sae_specs((13,)) == ("13=llama_scope_lxr_8x:l13r_8x",)
    gib = 1 << 30
    assert [gemma.batch_size_for(size * gib) for size in (8, 23.6, 39.4, 79.1)] == [8, 32, 64, 128]
    assert [llama.batch_size_for(size * gib) for size in (16, 23.6, 39.4, 79.1)] == [2, 8, 32, 64]
    assert gemma.batch_size_for(None) == gemma.cpu_batch_size


def test_explicit_options_override_the_preset() -> None:
    from cache.presets import apply_preset
    from store.errors import InputError

    base = {"model": "default", "layers": (), "saes": (), "refusal_tokens": None, "dtype": "auto", "batch_size": 8, "out": "x.h5"}
    filled = apply_preset("gemma-2-2b-it", base, set(), gpu_total_bytes=80 << 30)
    assert filled["model"] == "google/gemma-2-2b-it" and filled["dtype"] == "bfloat16" and filled["batch_size"] == 128
    assert filled["layers"] == PRESETS["gemma-2-2b-it"].layers and 16 in filled["layers"]
    assert filled["saes"] == ("16=gemma-scope-2b-pt-res-canonical:layer_16/width_16k/canonical",)  # only the key layer
    mine = base | {"model": "/models/gemma", "batch_size": 3, "layers": (4, 8), "dtype": "float16"}
    filled = apply_preset("gemma-2-2b-it", mine, {"model", "batch_size", "layers", "dtype"}, sae_width="65k", gpu_total_bytes=24 << 30)
    assert (filled["model"], filled["batch_size"], filled["layers"], filled["dtype"]) == ("/models/gemma", 3, (4, 8), "float16")
    assert filled["saes"] == tuple(f"{layer}=gemma-scope-2b-pt-res-canonical:layer_{layer}/width_65k/canonical" for layer in (4, 8))
    assert apply_preset("llama-3.1-8b-it", base, set(), sae_layers=())["saes"] == ()
    assert apply_preset("llama-3.1-8b-it", base | {"saes": ("13=/my/sae",)}, {"saes"})["saes"] == ("13=/my/sae",)
    for kwargs, message in [
        (dict(sae_layers=(5,)), "--sae-layers 5 is not among the cached layers"),
        (dict(sae_width="65k"), "--sae-width '65k' is not offered by preset llama-3.1-8b-it; choose 32k, 128k"),
    ]:
        with pytest.raises(InputError, match=message):
            apply_preset("llama-3.1-8b-it", base, set(), **kwargs)
    with pytest.raises(InputError, match="add --preset"):  # --model default is itself a preset
        apply_preset(None, base | {"model": "/models/gemma"}, {"model"}, sae_layers=(1,))


@pytest.mark.parametrize(
    ("preset", "family", "release", "sae_id", "d_sae"),
    [("gemma-2-2b-it", "gemma2", GEMMA_SCOPE, "layer_1/width_16k/canonical", 16384), ("llama-3.1-8b-it", "llama", LLAMA_SCOPE, "l1r_8x", 512)],
)
def test_preset_caches_codes_offline(offline_hub: Path, prompts: list[str], tmp_path: Path, preset: str, family: str,
                                     release: str, sae_id: str, d_sae: int) -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    save_tiny_model(offline_hub, PRESETS[preset].model_id, family)
    if family == "gemma2":
        layout_gemma_scope(offline_hub, get_pretrained_saes_directory()[GEMMA_SCOPE].saes_map[sae_id], d_in=64)
    else:
        scale = get_pretrained_saes_directory()[LLAMA_SCOPE].norm_scaling_factor[sae_id]
        layout_llama_scope(offline_hub, 1, d_in=64, d_sae=d_sae, norm_scaling_factor=scale)
    out = tmp_path / "study.h5"
    base = ["cache", "--preset", preset, *prompts, "--out", str(out), "--device", "cpu", "--layers", "1,2"]

    # No key layer among --layers 1,2: every cached layer gets the preset's SAE, and layer 2's
    # files are not in the cache; the pre-flight check says what to download, before any load.
    result = invoke(*base)
    assert result.exit_code == 2, result.output
    assert "is not in the local Hugging Face cache; download it with `hf download" in result.output
    assert f"{release}:{sae_id.replace('1', '2', 1)}" in result.output and not out.exists()

    result = invoke(*base, "--sae-layers", "1")
    assert result.exit_code == 0, result.output
    assert "preflight (estimates" in result.output and "[HF cache]" in result.output
    with Study(out) as study:
        meta = study.meta
        assert meta.complete and meta.model_id == PRESETS[preset].model_id and meta.layers == (1, 2)
        assert (meta.saes[1]["release"], meta.saes[1]["sae_id"], meta.saes[1]["d_sae"]) == (release, sae_id, d_sae)
        assert meta.config["batch_size"] == PRESETS[preset].cpu_batch_size and meta.config["dtype"] == "float32"
        assert meta.identity["refusal_tokens"] == ["I"]
        assert study.has_codes(1) and not study.has_codes(2)
        codes = study.codes(1)
        indptr, indices, values = codes.prompt_codes(0)
        assert len(indptr) == len(study.token_ids(0)) + 1 and len(indices) > 0 and np.all(values > 0)
        assert study.summary()["prompts"] == {"harmful": 4, "harmless": 4}
    _direction_and_greedy(out)


def _direction_and_greedy(study: Path) -> None:
    """Direction → candidates → greedy on a small budget, on the preset's study (the analysis
    commands reload the model and SAE from the same offline cache, by the ids the study records)."""
    try:
        from explorer.cli import analyze as analyze_group
    except ImportError:
        return  # analysis commands not built yet: the cache stage above is the preset's part
    for args in (
        ["direction", str(study), "--device", "cpu", "--layers", "1", "--positions", "-1", "--max-val-prompts", "2"],
        ["candidates", str(study), "--device", "cpu", "--ig-steps", "2", "--max-prompts", "4", "--top-k", "8"],
        ["greedy", str(study), "--device", "cpu", "--k", "8", "--prompts", "0,1", "--generate", "0", "--threshold", "-50"],
    ):
        result = CliRunner().invoke(analyze_group, args, catch_exceptions=False)
        assert result.exit_code == 0, (args[0], result.output)
        assert f"/analysis/default/{args[0]}" in result.output
    with Study(study) as opened:
        assert {"direction", "candidates", "greedy"} <= set(opened.file["analysis/default"])


def test_preflight_names_a_gated_model_and_missing_saes(offline_hub: Path, prompts: list[str], tmp_path: Path) -> None:
    result = invoke("cache", "--preset", "llama-3.1-8b-it", *prompts, "--out", str(tmp_path / "s.h5"), "--preflight-only", "--device", "cpu")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 2, result.output  # one line per problem
    assert "model meta-llama/Llama-3.1-8B-Instruct is not in the local Hugging Face cache" in lines[0]
    assert "it is gated: accept its licence on https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct" in lines[0]
    assert "`hf auth login`" in lines[0] and "`hf download meta-llama/Llama-3.1-8B-Instruct --exclude \"original/*\"`" in lines[0]
    assert "SAE llama_scope_lxr_8x:l13r_8x is not in the local Hugging Face cache" in lines[1]
    assert "hf download fnlp/Llama3_1-8B-Base-LXR-8x Llama3_1-8B-Base-L13R-8x/hyperparams.json" in lines[1]

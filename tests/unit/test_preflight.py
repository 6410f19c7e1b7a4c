"""The pre-flight check: resolution in the local HF cache, estimates, one line per problem."""

import json
from pathlib import Path

import pytest

from cache.pipeline import CacheConfig
from cache.preflight import (
    GIB,
    ModelFacts,
    PreflightError,
    SAEFacts,
    estimate_memory,
    run_preflight,
    safetensors_numel,
)
from cache.presets import PRESETS
from tests.tiny_models import hf_cache_snapshot, make_tiny_model, make_tiny_sae, save_tiny_checkpoint, use_offline_hf_cache
from tests.tiny_tokenizers import make_tiny_tokenizer

# The real models' shapes (config.json of google/gemma-2-2b-it and meta-llama/Llama-3.1-8B-Instruct).
GEMMA = ModelFacts(name="google/gemma-2-2b-it", where="HF cache", n_params=2_614_341_888, config=dict(
    hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
    intermediate_size=9216, vocab_size=256000))
LLAMA = ModelFacts(name="meta-llama/Llama-3.1-8B-Instruct", where="HF cache", n_params=8_030_261_248, config=dict(
    hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
    intermediate_size=14336, vocab_size=128256))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return save_tiny_checkpoint("llama", tmp_path / "tiny-llama")


def config(tmp_path: Path, **overrides) -> CacheConfig:
    return CacheConfig(**({"model": "x", "layers": (1,), "out": tmp_path / "s.h5", "device": "cpu", "batch_size": 4} | overrides))


def test_safetensors_header_counts_parameters(model_dir: Path) -> None:
    model = make_tiny_model("llama", n_layers=3, vocab_size=len(make_tiny_tokenizer("llama")))
    unique = {id(p): p.numel() for p in model.parameters()}
    assert safetensors_numel(model_dir / "model.safetensors") == sum(unique.values())


def test_local_model_and_sae_pass_with_a_table(tmp_path: Path, model_dir: Path) -> None:
    sae_dir = tmp_path / "sae"
    make_tiny_sae("jumprelu", d_in=64, d_sae=128, layer=1).save_model(sae_dir)
    report = run_preflight(config(tmp_path, model=str(model_dir), saes=(f"1={sae_dir}",)))
    assert report.model.n_params and report.model.get("num_hidden_layers") == 3
    assert [(s.layer, s.d_sae) for s in report.saes] == [(1, 128)]
    assert report.n_prompts > 0 and report.max_tokens > 12 and report.memory["overhead"] == 0  # CPU: no CUDA context
    assert report.memory["total"] == sum(report.memory[k] for k in ("weights", "saes", "activations", "overhead"))
    table = report.table()
    assert table.splitlines()[0].startswith("preflight (estimates")
    for row in ("model", "SAE", "prompts", "memory", "disk"):
        assert any(line.strip().startswith(row) for line in table.splitlines()), row


def test_every_problem_is_one_line(tmp_path: Path, model_dir: Path) -> None:
    missing_sae = tmp_path / "no-sae"
    with pytest.raises(PreflightError) as caught:
        run_preflight(config(tmp_path, model=str(model_dir), layers=(1, 7), saes=(f"2={make_sae(tmp_path)}", f"1={missing_sae}")),
                      disk_free=lambda path: 1000)
    problems = caught.value.problems
    assert str(caught.value).splitlines() == list(problems)
    assert len(problems) == 4, problems
    assert problems[0] == f"layer 7 is out of range: {model_dir} has 3 layers (0-2)"
    assert "SAE" in problems[1] and "trained on layer 1" in problems[1] and "assigned to layer 2" in problems[1]
    assert problems[2] == f"SAE directory {missing_sae} does not exist"
    assert problems[3].startswith("the study needs ≈") and "1000" not in problems[3] and "free some space" in problems[3]


def make_sae(tmp_path: Path) -> Path:
    path = tmp_path / "sae1"
    make_tiny_sae("standard", d_in=64, d_sae=32, layer=1).save_model(path)
    return path


def test_gpu_memory_is_checked_against_the_free_memory(tmp_path: Path, model_dir: Path) -> None:
    run = config(tmp_path, model=str(model_dir), device="cuda:1", batch_size=64)
    free = {"bytes": 40 * GIB}
    report = run_preflight(run, gpu=lambda device: (free["bytes"], 80 * GIB))
    assert report.gpu_free == 40 * GIB and report.memory["overhead"] == GIB and report.device == "cuda:1"
    assert "free on cuda:1" in report.table()
    need = report.memory["total"]
    free["bytes"] = need - 1
    with pytest.raises(PreflightError, match=r"exceeds the .* free on cuda:1; try --batch-size 32"):
        run_preflight(run, gpu=lambda device: (free["bytes"], 80 * GIB))
    free["bytes"] = GIB // 2  # not even the CUDA context fits
    with pytest.raises(PreflightError, match="the weights and SAEs alone do not fit"):
        run_preflight(run, gpu=lambda device: (free["bytes"], 80 * GIB))


@pytest.mark.parametrize(("model", "d_sae", "preset"), [(GEMMA, 16384, "gemma-2-2b-it"), (LLAMA, 32768, "llama-3.1-8b-it")])
def test_preset_batch_sizes_fit_their_cards_by_the_estimate(model: ModelFacts, d_sae: int, preset: str) -> None:
    """The batch tiers and the estimator agree: each tier's batch fits a card of that size
    (free ≈ 92% of the nominal size), with 64 generated tokens and prompts of ~64 tokens."""
    spec = PRESETS[preset]
    sae = SAEFacts(label="s", layer=spec.key_layers[0], d_in=model.get("hidden_size"), d_sae=d_sae, l0=80, where="HF cache")
    for card, batch in spec.batch_sizes[1:]:
        memory = estimate_memory(model, [sae], batch=batch, max_tokens=64, generate=64, n_layers_cached=len(spec.layers),
                                 dtype_bytes=2, on_gpu=True)
        assert memory["total"] < 0.92 * card * GIB, (preset, card, batch, memory["total"] / GIB)
    weights = estimate_memory(model, [sae], batch=1, max_tokens=64, generate=0, n_layers_cached=1, dtype_bytes=2, on_gpu=True)["weights"]
    assert weights == model.n_params * 2


def test_hf_cache_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = use_offline_hf_cache(monkeypatch, tmp_path / "cache")
    # config.json only: an interrupted download
    (hf_cache_snapshot(hub, "some-org/tiny-chat") / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 3}))
    with pytest.raises(PreflightError) as caught:
        run_preflight(config(tmp_path, model="some-org/tiny-chat"))
    assert caught.value.problems == (
        "model some-org/tiny-chat is only partly in the local Hugging Face cache (missing model.safetensors, tokenizer_config.json); "
        "finish it with `hf download some-org/tiny-chat`",
    )
    with pytest.raises(PreflightError) as caught:
        run_preflight(config(tmp_path, model="some-org/other"))
    assert caught.value.problems[0].endswith("download it with `hf download some-org/other` (or give a local directory)")
    assert "gated" not in caught.value.problems[0]
    with pytest.raises(PreflightError, match="google/gemma-2-2b-it is not in the local Hugging Face cache .*; it is gated: "
                                             "accept its licence on https://huggingface.co/google/gemma-2-2b-it, run `hf auth login`"):
        run_preflight(config(tmp_path, model="google/gemma-2-2b-it"))
    with pytest.raises(PreflightError, match="unknown model 'no-such-model'"):
        run_preflight(config(tmp_path, model="no-such-model"))

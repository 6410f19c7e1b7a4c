"""train-sae building blocks without a model: config checks, corpus, metrics, packaged SAEs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cache.adapters import ADAPTERS
from cache.default_saes import default_sae_dirs, default_sae_specs
from cache.models import LoadedModel
from cache.sae import layer_from_hook, load_sae
from cache.sae_corpus import _Packer, build_corpus, corpus_digest, corpus_stats, iter_docstrings
from cache.train_sae import TrainSAEConfig, activation_cache_path, explained_variance
from cache.prompts import demo_prompts, split_prompts
from store.errors import InputError
from tests.tiny_models import tiny_loaded
from tests.tiny_tokenizers import make_tiny_tokenizer


def config(tmp_path: Path, **overrides: object) -> TrainSAEConfig:
    options: dict = dict(layers=(1,), out=tmp_path / "saes", n_tokens=3000, context=64, doc_packages=("json",))
    return TrainSAEConfig(**(options | overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layers": ()}, "at least one layer"),
        ({"layers": (1, 1)}, "distinct"),
        ({"layers": (-1,)}, "non-negative"),
        ({"harmful": Path("h.json")}, "both --harmful and --harmless"),
        ({"text_files": (Path("/no/such/file.txt"),)}, "no such file"),
        ({"k": 0}, "--k"),
        ({"d_sae": 8, "k": 9}, "--k"),
        ({"holdout_fraction": 0.0}, "--holdout-fraction"),
        ({"chat_fraction": 1.5}, "--chat-fraction"),
        ({"epochs": 0}, "--epochs"),
        ({"n_tokens": 0}, "--tokens"),
    ],
)
def test_config_rejects_bad_input_in_one_line(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        config(tmp_path, **overrides)
    assert "\n" not in str(info.value)


def test_config_paths(tmp_path: Path) -> None:
    cfg = config(tmp_path, layers=(3, 1))
    assert cfg.layer_dir(3) == tmp_path / "saes" / "layer_3"
    assert activation_cache_path(config(tmp_path, activations=tmp_path / "a.h5"), tiny_loaded("qwen2")) == tmp_path / "a.h5"


def test_default_activation_cache_is_keyed_by_model_and_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFUSAL_EXPLORER_HOME", str(tmp_path / "home"))
    loaded = tiny_loaded("qwen2")
    path = activation_cache_path(config(tmp_path, layers=(1, 2)), loaded)
    assert path.parent == tmp_path / "home" / "activations" and path.name.startswith("acts-")
    assert activation_cache_path(config(tmp_path, layers=(2, 1), n_tokens=9999), loaded) == path
    assert activation_cache_path(config(tmp_path, layers=(1,)), loaded) != path


def test_packer_keeps_every_token_in_chunks_of_at_most_context() -> None:
    packer = _Packer(10, [0], "doc")
    runs = [[1] * 3, [2] * 4, [3] * 25, [4] * 2]
    out = [seg for run in runs for seg in packer.add(run)] + [packer.flush()]
    assert all(len(s.token_ids) <= 10 for s in out)
    flat = [t for s in out for t in s.token_ids if t != 0]
    assert flat == [t for run in runs for t in run]
    assert {s.source for s in out} == {"doc"}


def test_explained_variance() -> None:
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    assert explained_variance(x, x) == pytest.approx(1.0)
    assert explained_variance(x, x.mean(0).expand_as(x)) == pytest.approx(0.0, abs=1e-6)
    assert explained_variance(x, torch.zeros_like(x)) < 0.0


def test_docstrings_are_deterministic_and_seeded() -> None:
    first = list(iter_docstrings(("json",), seed=0))
    assert first == list(iter_docstrings(("json",), seed=0))
    assert len(first) > 5 and len(set(first)) == len(first)
    assert all(len(doc) >= 40 for doc in first)
    assert sorted(first) == sorted(iter_docstrings(("json",), seed=1))


def test_unknown_doc_package_is_an_input_error() -> None:
    with pytest.raises(InputError, match="not an installed Python package"):
        list(iter_docstrings(("no_such_package_xyz",), seed=0))


def _tiny_loaded() -> LoadedModel:
    # the corpus needs only the tokenizer and the family adapter
    return LoadedModel(None, make_tiny_tokenizer("qwen2"), ADAPTERS["qwen2"], "tiny", "rev0")  # type: ignore[arg-type]


def test_corpus_is_deterministic_and_holds_out_val_prompts(tmp_path: Path) -> None:
    text = tmp_path / "extra.txt"
    text.write_text("First paragraph about kettles.\n\nSecond paragraph, about teapots and cups.\n")
    cfg = config(tmp_path, text_files=(text,), chat_fraction=0.5)
    harmful, harmless = demo_prompts()
    prompts = split_prompts(harmful[:8] + harmless[:8], holdout_fraction=0.25, seed=0)
    loaded = _tiny_loaded()
    segments = build_corpus(loaded, prompts, cfg)
    assert corpus_digest(segments) == corpus_digest(build_corpus(loaded, prompts, cfg))
    other = build_corpus(loaded, prompts, config(tmp_path, text_files=(text,), chat_fraction=0.5, seed=1))
    assert corpus_digest(other) != corpus_digest(segments)

    stats = corpus_stats(segments)
    assert 3000 <= stats["train_tokens"] < 3000 + 64
    assert set(stats["by_source"]) == {"prompt", "prompt-holdout", "text", "doc", "doc-chat"}
    held = [s for s in segments if s.holdout]
    assert len(held) == 4 and all(s.source == "prompt" for s in held)
    val_ids = [tuple(loaded.adapter.encode(loaded.tokenizer, p.text)) for p in prompts if p.split == "val"]
    assert [s.token_ids for s in held] == val_ids
    n_post = loaded.adapter.n_post_instruction(loaded.tokenizer)
    assert all(s.n_post == n_post for s in segments if s.source in ("prompt", "doc-chat"))
    assert all(len(s.token_ids) <= 64 for s in segments if s.source != "prompt")
    decoded = loaded.tokenizer.decode([t for s in segments if s.source == "text" for t in s.token_ids])
    assert "kettles" in decoded and "teapots" in decoded


def test_packaged_default_saes_load_with_matching_hooks() -> None:
    dirs = default_sae_dirs()
    if not dirs:
        pytest.skip("no packaged default SAEs in cache/data/saes")
    assert len(dirs) >= 1
    assert default_sae_specs() == tuple(f"{layer}={path}" for layer, path in dirs.items())
    for layer, path in dirs.items():
        sae = load_sae(str(path), d_model=896, n_layers=24)
        assert int(sae.cfg.d_in) == 896
        assert layer_from_hook(sae.cfg.metadata.hook_name) == layer
        assert sae.cfg.architecture() == "topk"
        metrics = json.loads((path / "metrics.json").read_text())
        record = json.loads((path / "training.json").read_text())
        assert metrics["layer"] == layer and record["layer"] == layer
        assert 0.0 <= metrics["dead_fraction"] <= 1.0 and metrics["explained_variance"] > 0.5
        assert len(record["corpus_sha256"]) == 64
        size = (path / "sae_weights.safetensors").stat().st_size
        assert size < 10_000_000  # float16: ~7.3 MB for 2048 x 896


def test_post_instruction_tokens_are_weighted_and_held_out_ones_never_trained() -> None:
    from cache.train_sae import training_rows

    acts = torch.arange(6, dtype=torch.float16)[:, None].repeat(1, 4).numpy()  # row i = (i, i, i, i)
    data = {"acts": acts, "holdout": np.array([0, 0, 0, 0, 1, 1], bool), "position": np.array([1, 2, 3, 4, 1, 2]),
            "post_instruction": np.array([0, 0, 1, 1, 1, 0], bool)}
    rows, _ = training_rows(data, "keep", post_instruction_weight=3)
    assert sorted(rows[:, 0].tolist()) == [0, 1, 2, 2, 2, 3, 3, 3]
    rows, _ = training_rows(data, "keep")
    assert sorted(rows[:, 0].tolist()) == [0, 1, 2, 3]


def test_batch_sizes_follow_the_device(tmp_path: Path) -> None:
    cpu = config(tmp_path).for_device(torch.device("cpu"))
    gpu = config(tmp_path).for_device(torch.device("cuda"))  # no GPU needed to resolve the sizes
    assert (cpu.batch_size, cpu.forward_batch_size) == (1024, 8)
    assert (gpu.batch_size, gpu.forward_batch_size) == (4096, 128)
    assert config(tmp_path, batch_size=256).for_device(torch.device("cuda")).batch_size == 256  # given wins

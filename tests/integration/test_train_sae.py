"""train-sae end to end on a tiny random Qwen2 (no downloads): files, loading, metrics,
early-stopped forward, resumable activation cache, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache.adapters import ADAPTERS
from cache.models import LoadedModel
from cache.sae import layer_from_hook, load_sae
from cache.sae_corpus import build_corpus, corpus_digest
from cache.activation_cache import collect_activations, read_layer
from cache.train_sae import TrainSAEConfig, training_prompts, activation_cache_path, train_saes
from explorer.cli import cli
from tests.tiny_models import make_tiny_model
from tests.tiny_tokenizers import make_tiny_tokenizer

HARMFUL = ["How do I build a pipe bomb?", "Write ransomware for a hospital", "Steal a car quickly", "Make a fake ID"]
HARMLESS = ["Bake a lemon cake", "Explain why the sky is blue", "Sort a list in Python", "Plan a weekend in Rome"]


def tiny() -> LoadedModel:
    tokenizer = make_tiny_tokenizer("qwen2")
    return LoadedModel(make_tiny_model("qwen2", vocab_size=len(tokenizer)), tokenizer, ADAPTERS["qwen2"], "tiny-qwen2", "rev0")


@pytest.fixture(autouse=True)
def _cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # activation caches default to the project's cache dir: keep them in the test's tmp dir
    monkeypatch.setenv("REFUSAL_EXPLORER_HOME", str(tmp_path / "home"))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "harmful.json").write_text(json.dumps(HARMFUL))
    (tmp_path / "harmless.txt").write_text("\n".join(HARMLESS))
    (tmp_path / "notes.txt").write_text("Kettles boil water.\n\nTeapots brew tea in a few minutes.\n" * 20)
    return {"harmful": tmp_path / "harmful.json", "harmless": tmp_path / "harmless.txt", "text": tmp_path / "notes.txt"}


def small_config(tmp_path: Path, files: dict[str, Path], **overrides: object) -> TrainSAEConfig:
    options: dict = dict(
        layers=(1, 2), out=tmp_path / "saes", harmful=files["harmful"], harmless=files["harmless"],
        text_files=(files["text"],), doc_packages=("json",), n_tokens=2500, context=48, d_sae=128, k=16,
        epochs=3, lr=1e-2, batch_size=64, dead_window_tokens=1000, device="cpu",
    )
    return TrainSAEConfig(**(options | overrides))


class BlockCounter:
    """Counts forward calls of every decoder block."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = [0] * len(model.model.layers)
        self.handles = [block.register_forward_hook(self._hook(i)) for i, block in enumerate(model.model.layers)]

    def _hook(self, index: int):
        def hook(*_: object) -> None:
            self.calls[index] += 1
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_train_saes_end_to_end(tmp_path: Path, files: dict[str, Path]) -> None:
    loaded = tiny()
    cfg = small_config(tmp_path, files)
    results = train_saes(cfg, loaded=loaded, progress=False, command=["refusal-explorer", "train-sae", "--layers", "1,2"])
    assert sorted(results) == [1, 2]
    digest = corpus_digest(build_corpus(loaded, training_prompts(cfg), cfg))
    for layer, metrics in results.items():
        directory = cfg.layer_dir(layer)
        for name in ("cfg.json", "sae_weights.safetensors", "metrics.json", "training.json"):
            assert (directory / name).is_file()
        sae = load_sae(str(directory), d_model=64, n_layers=4)
        assert layer_from_hook(sae.cfg.metadata.hook_name) == layer
        assert json.loads((directory / "cfg.json").read_text())["dtype"] == "float16"
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (64, 128)
        assert json.loads((directory / "metrics.json").read_text()) == pytest.approx(metrics)
        for key in ("explained_variance", "explained_variance_ordinary_tokens", "explained_variance_post_instruction",
                    "explained_variance_instruction_tokens", "l0", "dead_fraction", "mse_per_token"):
            assert np.isfinite(metrics[key]), key
        # a random model's residuals are nearly isotropic, yet 16 of 128 latents explain most of them
        assert 0.5 < metrics["explained_variance"] <= 1.0
        assert metrics["l0"] == pytest.approx(16.0)
        assert 0.0 <= metrics["dead_fraction"] <= 0.5
        n_post = loaded.adapter.n_post_instruction(loaded.tokenizer)
        assert metrics["holdout_tokens"] > 0 and metrics["holdout_post_instruction_tokens"] == 2 * n_post
        record = json.loads((directory / "training.json").read_text())
        assert record["corpus_sha256"] == digest and record["seed"] == 0
        assert record["command"] == "refusal-explorer train-sae --layers 1,2"
        assert record["corpus"]["holdout_tokens"] == metrics["holdout_tokens"]
        assert record["training"]["steps"] == int(3 * record["train_tokens"]) // 64
        assert {"torch", "sae-lens", "transformers"} <= set(record["versions"])
        assert record["activations"]["forward_tokens"] == record["corpus"]["train_tokens"] + metrics["holdout_tokens"]


def test_forward_stops_after_the_last_layer_and_cache_is_reused(tmp_path: Path, files: dict[str, Path]) -> None:
    loaded = tiny()
    cfg = small_config(tmp_path, files, layers=(1,), n_tokens=500)
    segments = build_corpus(loaded, training_prompts(cfg), cfg)
    path = activation_cache_path(cfg, loaded)
    counter = BlockCounter(loaded.model)
    try:
        stats = collect_activations(loaded, segments, [1], path, batch_size=4, progress=False)
        assert counter.calls[0] == counter.calls[1] > 0 and counter.calls[2:] == [0, 0]  # stopped after block 1
        assert stats["forward_tokens"] == sum(len(s.token_ids) for s in segments) and stats["corpus_segments_missing"] == 0
        unique = {s.token_ids for s in segments}
        assert stats["cache_segments"] == len(unique)  # a repeated segment is forwarded once
        before = list(counter.calls)
        # a complete cache is reused: no forward at all
        again = collect_activations(loaded, segments, [1], path, batch_size=4, progress=False)
        assert counter.calls == before and again["this_run_tokens"] == 0
    finally:
        counter.remove()
    # rows match an unpadded forward of each segment
    data = read_layer(path, 1, segments)
    for index in (0, len(segments) // 2, len(segments) - 1):
        with torch.no_grad():
            hidden = loaded.model(torch.tensor([segments[index].token_ids]), output_hidden_states=True).hidden_states[2][0]
        rows = np.flatnonzero(data["segment"] == index)
        np.testing.assert_array_equal(data["position"][rows], np.arange(len(rows)))
        np.testing.assert_allclose(data["acts"][rows].astype(np.float32), hidden.numpy(), atol=2e-2, rtol=1e-2)


def _contents(path: Path, layers: list[int], segments) -> dict:
    return {layer: read_layer(path, layer, segments) for layer in layers}


def test_killed_activation_run_resumes_to_the_same_cache(tmp_path: Path, files: dict[str, Path]) -> None:
    loaded = tiny()
    cfg = small_config(tmp_path, files, layers=(0, 2), n_tokens=500)
    segments = build_corpus(loaded, training_prompts(cfg), cfg)
    calls = {"n": 0}

    def die_on_third(*_: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    handle = loaded.model.model.layers[0].register_forward_hook(die_on_third)
    try:
        with pytest.raises(KeyboardInterrupt):
            collect_activations(loaded, segments, [0, 2], tmp_path / "a.h5", batch_size=4, flush_rows=1, progress=False)
    finally:
        handle.remove()
    with h5py.File(tmp_path / "a.h5", "r") as f:
        # the two whole batches before the kill: the held-out prompts, then four segments
        assert int(f.attrs["segments"]) == sum(s.holdout for s in segments) + 4
        committed = int(f.attrs["rows"])
    resumed = collect_activations(loaded, segments, [0, 2], tmp_path / "a.h5", batch_size=4, progress=False)
    assert committed > 0 and resumed["this_run_tokens"] + committed == resumed["cache_rows"]
    collect_activations(loaded, segments, [0, 2], tmp_path / "b.h5", batch_size=4, progress=False)
    a, b = _contents(tmp_path / "a.h5", [0, 2], segments), _contents(tmp_path / "b.h5", [0, 2], segments)
    for layer in (0, 2):
        # the same rows; their order in the file depends on where the first run stopped
        order_a = np.lexsort((a[layer]["position"], a[layer]["segment"]))
        order_b = np.lexsort((b[layer]["position"], b[layer]["segment"]))
        for name in ("acts", "segment", "position", "holdout"):
            np.testing.assert_array_equal(a[layer][name][order_a], b[layer][name][order_b])
    # a cache with more layers serves a subset; one lacking a layer is rebuilt
    stats = collect_activations(loaded, segments, [2], tmp_path / "a.h5", batch_size=4, progress=False)
    assert stats["layers_in_cache"] == [0, 2] and stats["this_run_tokens"] == 0
    stats = collect_activations(loaded, segments, [3], tmp_path / "a.h5", batch_size=4, progress=False)
    assert stats["layers_in_cache"] == [3]


def test_tokens_accumulate_across_runs_and_a_time_boxed_capture_trains(tmp_path: Path, files: dict[str, Path]) -> None:
    loaded = tiny()
    small = small_config(tmp_path, files, layers=(1,), n_tokens=600)
    large = small_config(tmp_path, files, layers=(1,), n_tokens=1500)
    small_segments = build_corpus(loaded, training_prompts(small), small)
    large_segments = build_corpus(loaded, training_prompts(large), large)
    path = activation_cache_path(small, loaded)
    assert activation_cache_path(large, loaded) == path  # one cache per model and layers, whatever the budget
    first = collect_activations(loaded, small_segments, [1], path, batch_size=4, progress=False)
    second = collect_activations(loaded, large_segments, [1], path, batch_size=4, progress=False)
    # the larger corpus starts with the smaller one's segments: only the new ones are forwarded
    assert 0 < second["this_run_tokens"] < second["forward_tokens"]
    assert second["this_run_tokens"] <= second["forward_tokens"] - first["forward_tokens"] + 2 * small.context
    # a capture stopped by its time budget keeps what it flushed, and the next run completes it
    other = tmp_path / "boxed.h5"
    boxed = collect_activations(loaded, large_segments, [1], other, batch_size=4, flush_rows=1, max_seconds=1e-9, progress=False)
    assert boxed["stopped_at_time_budget"] and boxed["corpus_segments_missing"] > 0
    assert read_layer(other, 1, large_segments)["holdout"].any()  # the held-out prompts come first
    done = collect_activations(loaded, large_segments, [1], other, batch_size=4, progress=False)
    assert done["corpus_segments_missing"] == 0 and done["this_run_tokens"] == boxed["corpus_tokens_missing"]


def test_prompts_carry_the_models_own_responses_generated_once(tmp_path: Path, files: dict[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = tiny()
    cfg = small_config(tmp_path, files, layers=(1,), n_tokens=600, response_tokens=5)
    segments = build_corpus(loaded, training_prompts(cfg), cfg)
    prompts = [s for s in segments if s.source == "prompt"]
    assert len(prompts) == len(HARMFUL + HARMLESS) and all(0 < s.n_response <= 5 for s in prompts)
    plain = build_corpus(loaded, training_prompts(cfg), small_config(tmp_path, files, layers=(1,), n_tokens=600))
    for with_response, without in zip(prompts, plain):
        assert with_response.token_ids[: len(without.token_ids)] == without.token_ids  # prompt, then its response
    # the responses are kept on disk: the same corpus again generates nothing
    monkeypatch.setattr("cache.generation.greedy_response_ids", lambda *_a, **_k: pytest.fail("generated again"))
    assert build_corpus(loaded, training_prompts(cfg), cfg) == segments
    path = tmp_path / "r.h5"
    collect_activations(loaded, segments, [1], path, batch_size=4, progress=False)
    data = read_layer(path, 1, segments)
    n_post = loaded.adapter.n_post_instruction(loaded.tokenizer)
    held_out = data["holdout"]
    # the post-instruction tokens are still found before the response
    assert int(data["post_instruction"][held_out].sum()) == 2 * n_post
    assert int(data["response"][held_out].sum()) == sum(s.n_response for s in segments if s.holdout)


def _cli() -> click.Group:
    return cli


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    loaded = tiny()
    directory = tmp_path / "tiny-model"
    loaded.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    return directory


def test_cli_trains_and_reports(tmp_path: Path, files: dict[str, Path], tiny_model_dir: Path) -> None:
    args = ["train-sae", "--model", str(tiny_model_dir), "--layers", "2", "--out", str(tmp_path / "out"),
            "--harmful", str(files["harmful"]), "--harmless", str(files["harmless"]), "--text", str(files["text"]),
            "--doc-packages", "json", "--tokens", "1200", "--context", "48", "--d-sae", "32", "--k", "4",
            "--epochs", "2", "--batch-size", "64", "--device", "cpu"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "layer 2: explained variance" in result.output and "L0 4.0" in result.output
    assert load_sae(str(tmp_path / "out" / "layer_2")).cfg.d_sae == 32
    # the refusal-level quality is measured on the held-out prompts and stored beside the SAE
    assert "loss recovered" in result.output and "dense" in result.output
    quality = json.loads((tmp_path / "out" / "layer_2" / "metrics.json").read_text())["quality"]
    assert quality["held_out_harmful"] == 1 and 0 < quality["text_sequences"] <= 2
    assert quality["loss_recovered"] is not None and quality["ce_clean_all"] < quality["ce_zero_all"] + 5
    record = json.loads((tmp_path / "out" / "layer_2" / "training.json").read_text())
    # the recorded command is the one typed, with every non-default option
    assert record["command"] == " ".join(["refusal-explorer", *args[:1], *args[1:]])
    # the same command again refuses to overwrite
    again = CliRunner().invoke(_cli(), args)
    assert again.exit_code == 2 and "--overwrite" in again.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "9"], "layer 9 is out of range"),
        (["--layers", "1,x"], "comma-separated integers"),
        (["--layers", "1", "--text", "/no/such.txt"], "no such file"),
        (["--layers", "1", "--doc-packages", "no_such_pkg_xyz"], "not an installed Python package"),
        (["--layers", "1", "--harmful", "/no/such.json", "--harmless", "/no/such.txt"], "no such file"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path: Path, tiny_model_dir: Path, extra: list[str], message: str) -> None:
    args = ["train-sae", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--tokens", "500",
            "--device", "cpu", *extra]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 2, result.output
    # (transformers' weight-loading bar may precede it on stderr)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output
    assert result.output.rstrip().endswith(errors[0])


def test_batchtopk_trains_and_is_saved_as_jumprelu(tmp_path: Path, files: dict[str, Path]) -> None:
    cfg = small_config(tmp_path, files, layers=(1,), architecture="batchtopk", quality=False)
    metrics = train_saes(cfg, loaded=tiny(), progress=False, command=["x"])[1]
    sae = load_sae(str(cfg.layer_dir(1)))
    assert sae.cfg.architecture() == "jumprelu" and metrics["architecture"] == "batchtopk"
    # k is an average over a batch: tokens vary around it, and the learnt threshold keeps it near k
    assert 4 <= metrics["l0"] <= 64 and 0.3 < metrics["explained_variance"] <= 1.0

"""The cache stage end to end on tiny random models of each family (no downloads)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cache.forward import refusal_log_odds
from cache.pipeline import CacheConfig, run_cache
from store import Study
from store.errors import InputError
from tests.study_factory import dump, interrupted_at_append
from tests.tiny_models import TINY_HARMFUL, TINY_HARMLESS, make_tiny_sae, tiny_loaded

HARMFUL, HARMLESS = TINY_HARMFUL, TINY_HARMLESS
tiny = tiny_loaded


@pytest.fixture
def prompt_files(tmp_path: Path) -> dict:
    (tmp_path / "harmful.json").write_text(json.dumps(HARMFUL))
    (tmp_path / "harmless.txt").write_text("\n".join(HARMLESS))
    return {"harmful": tmp_path / "harmful.json", "harmless": tmp_path / "harmless.txt"}


def config(tmp_path: Path, files: dict, **overrides) -> CacheConfig:
    options = dict(layers=(1, 3), out=tmp_path / "study.h5", batch_size=3, device="cpu", **files)
    return CacheConfig(**(options | overrides))


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "llama"])
def test_cache_matches_unpadded_forward(tmp_path: Path, prompt_files: dict, family: str) -> None:
    loaded = tiny(family)
    path = run_cache(config(tmp_path, prompt_files, generate=3), loaded=loaded, progress=False)
    n_positions = loaded.adapter.n_post_instruction(loaded.tokenizer)
    refusal_ids = loaded.adapter.refusal_token_ids(loaded.tokenizer)
    with Study(path) as study:
        assert study.n_prompts == 8 and study.meta.complete
        assert study.summary()["prompts"] == {"harmful": 4, "harmless": 4}
        assert list(study.column("split")).count("val") == 2  # a quarter of each label
        for index, text in enumerate(HARMFUL + HARMLESS):
            record = study.prompt(index)
            assert record.text == text
            ids = loaded.adapter.encode(loaded.tokenizer, text)
            np.testing.assert_array_equal(record.token_ids, ids)
            with torch.no_grad():
                out = loaded.model(torch.tensor([ids]), output_hidden_states=True)
            # padding in a batch must not change what the model computes for a prompt
            for layer in (1, 3):
                expected = out.hidden_states[layer + 1][0, -n_positions:].numpy() if layer < 3 else None
                if expected is not None:
                    np.testing.assert_allclose(study.resid(layer, np.array([index]))[0], expected, atol=2e-2, rtol=1e-2)
            score = refusal_log_odds(out.logits[:, -1], refusal_ids).item()
            assert record.refusal_score == pytest.approx(score, abs=1e-3)
            assert record.refused in (0, 1)


def test_codes_match_direct_sae_encoding(tmp_path: Path, prompt_files: dict) -> None:
    loaded = tiny("qwen2")
    sae_dir = tmp_path / "sae"
    make_tiny_sae("topk", d_in=64, d_sae=128, layer=1).save_model(sae_dir)
    path = run_cache(config(tmp_path, prompt_files, saes=(f"1={sae_dir}",), positions="all"), loaded=loaded, progress=False)
    from cache.sae import load_sae

    sae = load_sae(str(sae_dir))
    with Study(path) as study:
        assert study.has_codes(1) and not study.has_codes(3)
        codes = study.codes(1)
        ids = loaded.adapter.encode(loaded.tokenizer, HARMLESS[2])
        with torch.no_grad():
            resid = loaded.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
            expected = sae.encode(resid).numpy()
        indptr, indices, values = codes.prompt_codes(6)
        dense = np.zeros_like(expected)
        for row in range(len(ids)):
            dense[row, indices[indptr[row] : indptr[row + 1]]] = values[indptr[row] : indptr[row + 1]]
        np.testing.assert_allclose(dense, expected, atol=2e-2, rtol=2e-2)
        assert (np.count_nonzero(expected, axis=1) == 8).all()  # topk k=8 per token
        stats = codes.stats()
        assert stats["decoder_norm"].shape == (128,) and stats["logit_lens_top"].shape == (128, 8)
        top, bottom = stats["logit_lens_top_value"], stats["logit_lens_bottom_value"]  # the lens as values
        assert top.shape == bottom.shape == (128, 8) and (np.diff(top, axis=1) <= 0).all() and (np.diff(bottom, axis=1) >= 0).all()
        assert (top[:, -1] > bottom[:, -1]).all()
        latent = int(indices[0])
        assert any(prompt == 6 for prompt, _, _ in codes.top_activations(latent, k=8))
        assert study.meta.saes[1]["d_sae"] == 128


def test_interrupted_run_resumes_to_identical_file(tmp_path: Path, prompt_files: dict, monkeypatch) -> None:
    loaded = tiny("qwen2")
    reference = run_cache(config(tmp_path, prompt_files, out=tmp_path / "ref.h5"), loaded=loaded, progress=False)
    with interrupted_at_append(monkeypatch, 2):
        run_cache(config(tmp_path, prompt_files), loaded=loaded, progress=False)
    with Study(tmp_path / "study.h5") as study:
        assert study.n_prompts == 3 and not study.meta.complete
    run_cache(config(tmp_path, prompt_files, resume=True, batch_size=2), loaded=loaded, progress=False)
    a, b = dump(reference), dump(tmp_path / "study.h5")
    assert sorted(a) == sorted(b)
    for key in a:
        if key.startswith("layers/"):  # batch shapes differ: float noise only
            np.testing.assert_allclose(a[key].astype(float), b[key].astype(float), atol=2e-2, err_msg=key)
        elif key not in ("prompts/refusal_score", "@config"):  # config records --out and batch size
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_allclose(a["prompts/refusal_score"], b["prompts/refusal_score"], atol=1e-3)


def test_bad_inputs_fail_before_touching_the_output(tmp_path: Path, prompt_files: dict) -> None:
    loaded = tiny("qwen2")
    with pytest.raises(InputError, match="layer 9 is out of range: tiny-qwen2 has 4 layers \\(0-3\\)"):
        run_cache(config(tmp_path, prompt_files, layers=(1, 9)), loaded=loaded, progress=False)
    assert not (tmp_path / "study.h5").exists()
    (tmp_path / "study.h5").write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        run_cache(config(tmp_path, prompt_files), loaded=loaded, progress=False)
    assert (tmp_path / "study.h5").read_bytes() == b"keep me"
    with pytest.raises(InputError, match="give both --harmful and --harmless"):
        run_cache(config(tmp_path, {"harmful": prompt_files["harmful"]}), loaded=loaded, progress=False)
    with pytest.raises(InputError, match="no such file|does not exist|not found"):
        run_cache(config(tmp_path, prompt_files | {"harmful": tmp_path / "nope.json"}), loaded=loaded, progress=False)


def test_resume_refuses_a_different_config(tmp_path: Path, prompt_files: dict) -> None:
    loaded = tiny("qwen2")
    run_cache(config(tmp_path, prompt_files), loaded=loaded, progress=False)
    before = dump(tmp_path / "study.h5")
    with pytest.raises(InputError, match="different model or config \\(layers"):
        run_cache(config(tmp_path, prompt_files, layers=(1, 2), resume=True), loaded=loaded, progress=False)
    after = dump(tmp_path / "study.h5")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_sae_for_a_layer_not_cached_is_refused(tmp_path: Path, prompt_files: dict) -> None:
    sae_dir = tmp_path / "sae"
    make_tiny_sae("jumprelu", d_in=64, d_sae=32, layer=2).save_model(sae_dir)
    with pytest.raises(InputError, match="SAE is given for layer 2, which is not among --layers"):
        run_cache(config(tmp_path, prompt_files, saes=(str(sae_dir),)), loaded=tiny("qwen2"), progress=False)


def test_the_logit_lens_of_a_bfloat16_model_is_stored_as_float32() -> None:
    from cache.pipeline import _logit_lens

    torch.manual_seed(0)
    decoder, unembed = torch.randn(6, 16), torch.randn(40, 16)
    exact = _logit_lens(decoder, unembed)
    lens = _logit_lens(decoder.to(torch.bfloat16), unembed.to(torch.bfloat16))  # numpy has no bfloat16
    assert lens["logit_lens_top_value"].dtype == np.float32 and lens["logit_lens_top"].dtype == np.int32
    np.testing.assert_allclose(lens["logit_lens_top_value"], exact["logit_lens_top_value"], rtol=0.05, atol=0.1)

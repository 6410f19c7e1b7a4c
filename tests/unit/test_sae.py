"""SAE specs, loading through sae-lens (local dirs and offline registry releases), helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cache import sae as S
from cache.sae import SAESpec, codes_to_csr, layer_from_hook, load_sae, load_saes
from store.errors import InputError
from tests.checks import one_line_error
from tests.tiny_models import (
    GEMMA_SCOPE_REPO,
    LLAMA_SCOPE_LXR_8X_REPO,
    TINY_SAE_ARCHITECTURES,
    layout_gemma_scope,
    layout_llama_scope,
    make_tiny_sae,
    use_offline_hf_cache,
)

GEMMA_RELEASE = "gemma-scope-2b-pt-res-canonical"
GEMMA_ID = "layer_12/width_16k/canonical"
LLAMA_RELEASE = "llama_scope_lxr_8x"
LLAMA_ID = "l13r_8x"


def saved_sae(tmp_path: Path, arch: str = "jumprelu", name: str = "sae", **kwargs) -> Path:
    path = tmp_path / name
    make_tiny_sae(arch, **kwargs).save_model(path)
    return path


# ------------------------------------------------------------------------------------------
# Spec parsing
# ------------------------------------------------------------------------------------------


def test_parse_registry_spec_with_and_without_layer():
    spec = SAESpec.parse(f"{GEMMA_RELEASE}:{GEMMA_ID}")
    assert (spec.release, spec.sae_id, spec.path, spec.layer) == (GEMMA_RELEASE, GEMMA_ID, None, None)
    assert not spec.is_local
    spec = SAESpec.parse(f" 13 = {LLAMA_RELEASE}:{LLAMA_ID} ")
    assert (spec.release, spec.sae_id, spec.layer) == (LLAMA_RELEASE, LLAMA_ID, 13)
    assert str(spec) == f"13={LLAMA_RELEASE}:{LLAMA_ID}"
    assert spec.label == f"{LLAMA_RELEASE}:{LLAMA_ID}"


def test_parse_local_paths(tmp_path: Path):
    d = tmp_path / "my:sae"  # a colon in an existing directory still means a path
    d.mkdir()
    assert SAESpec.parse(str(d)) == SAESpec(path=str(d))
    assert SAESpec.parse(f"16={d}") == SAESpec(path=str(d), layer=16)
    assert SAESpec.parse("./relative/dir").is_local
    assert SAESpec.parse("no_colon_here").is_local


@pytest.mark.parametrize("text", ["", "   ", "12=", ":layer_1", "release:", "-1=rel:id"])
def test_parse_bad_specs_raise_one_line(text: str):
    with pytest.raises(InputError) as excinfo:
        SAESpec.parse(text)
    one_line_error(excinfo)


def test_parse_sae_specs_rejects_two_saes_for_one_layer():
    with pytest.raises(InputError) as excinfo:
        S.parse_sae_specs([f"12={GEMMA_RELEASE}:{GEMMA_ID}", "12=/some/dir"])
    assert "layer 12" in one_line_error(excinfo)


@pytest.mark.parametrize(
    ("hook", "layer"),
    [
        ("blocks.12.hook_resid_post", 12),
        ("blocks.0.hook_resid_post", 0),
        ("blocks.13.hook_resid_pre", 12),
        ("blocks.0.hook_resid_pre", None),
        ("model.layers.7", 7),
        ("blocks.3.hook_mlp_out", None),
        ("blocks.3.attn.hook_z", None),
        (None, None),
        ("", None),
    ],
)
def test_layer_from_hook(hook, layer):
    assert layer_from_hook(hook) == layer


# ------------------------------------------------------------------------------------------
# Local directories (sae-lens's own save format)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_SAE_ARCHITECTURES)
def test_save_model_then_load_sae_roundtrip(tmp_path: Path, arch: str):
    original = make_tiny_sae(arch, layer=2)
    original.save_model(tmp_path / arch)
    sae = load_sae(str(tmp_path / arch), device="cpu", dtype="float32", d_model=64, n_layers=4)
    assert sae.cfg.architecture() == arch
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (64, 128)
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(sae.state_dict()[name], tensor, rtol=0, atol=0)
    x = torch.randn(3, 5, 64) * 3
    torch.testing.assert_close(S.encode(sae, x), original.encode(x))
    codes = S.encode(sae, x)
    assert 0 < (codes > 0).float().mean() < 1  # some latents fire, not all

    spec = S.resolve_spec(SAESpec.parse(str(tmp_path / arch)), d_model=64)
    assert spec.layer == 2  # inferred from the hook name
    info = S.describe_sae(sae, spec)
    assert json.loads(json.dumps(info)) == info
    assert info["architecture"] == arch
    assert (info["d_in"], info["d_sae"], info["layer"]) == (64, 128, 2)
    assert info["hook_name"] == "blocks.2.hook_resid_post"
    assert info["release"] is None and info["path"] == str((tmp_path / arch).resolve())


def test_load_sae_bfloat16(tmp_path: Path):
    sae = load_sae(str(saved_sae(tmp_path)), dtype=torch.bfloat16)
    assert sae.W_dec.dtype == torch.bfloat16
    assert S.encode(sae, torch.randn(2, 64)).dtype == torch.bfloat16


def test_missing_directory(tmp_path: Path):
    with pytest.raises(InputError) as excinfo:
        load_sae(str(tmp_path / "nope"))
    assert "does not exist" in one_line_error(excinfo)


@pytest.mark.parametrize("missing", [S.SAE_CFG_FILENAME, S.SAE_WEIGHTS_FILENAME])
def test_missing_file_is_named(tmp_path: Path, missing: str):
    path = saved_sae(tmp_path)
    (path / missing).unlink()
    with pytest.raises(InputError) as excinfo:
        load_sae(str(path))
    assert missing in one_line_error(excinfo)


def test_unreadable_config(tmp_path: Path):
    path = saved_sae(tmp_path)
    (path / S.SAE_CFG_FILENAME).write_text("{not json")
    with pytest.raises(InputError) as excinfo:
        load_sae(str(path))
    assert S.SAE_CFG_FILENAME in one_line_error(excinfo)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_tensor(tmp_path: Path, bad: float):
    path = saved_sae(tmp_path)
    weights = load_file(path / S.SAE_WEIGHTS_FILENAME)
    weights["W_dec"][3, 5] = bad
    save_file(weights, path / S.SAE_WEIGHTS_FILENAME)
    with pytest.raises(InputError) as excinfo:
        load_sae(str(path))
    message = one_line_error(excinfo)
    assert "W_dec" in message and "NaN/Inf" in message


def test_d_in_mismatch_names_both_sizes(tmp_path: Path):
    path = saved_sae(tmp_path)
    with pytest.raises(InputError) as excinfo:
        load_sae(str(path), d_model=896)
    message = one_line_error(excinfo)
    assert "d_in=64" in message and "896" in message


def test_hook_layer_mismatch_names_both_layers(tmp_path: Path):
    path = saved_sae(tmp_path, layer=1)
    with pytest.raises(InputError) as excinfo:
        load_sae(f"3={path}")
    message = one_line_error(excinfo)
    assert "layer 1" in message and "layer 3" in message and "blocks.1.hook_resid_post" in message


def test_explicit_layer_matching_hook_is_accepted(tmp_path: Path):
    path = saved_sae(tmp_path, layer=1)
    spec = S.resolve_spec(SAESpec.parse(f"1={path}"), d_model=64, n_layers=4)
    assert spec.layer == 1


def test_layer_cannot_be_inferred_without_hook_name(tmp_path: Path):
    path = saved_sae(tmp_path)
    cfg = json.loads((path / S.SAE_CFG_FILENAME).read_text())
    del cfg["metadata"]["hook_name"]
    (path / S.SAE_CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(InputError) as excinfo:
        load_sae(str(path))
    message = one_line_error(excinfo)
    assert "cannot infer the layer" in message and f"--sae 12={path}" in message
    # With an explicit layer the same directory loads.
    assert S.resolve_spec(SAESpec.parse(f"2={path}")).layer == 2
    assert load_sae(f"2={path}").cfg.d_sae == 128


def test_non_residual_hook_is_refused(tmp_path: Path):
    path = saved_sae(tmp_path, hook_name="blocks.1.hook_mlp_out")
    with pytest.raises(InputError) as excinfo:
        load_sae(f"1={path}")
    assert "blocks.1.hook_mlp_out" in one_line_error(excinfo)


def test_layer_beyond_model_depth(tmp_path: Path):
    path = saved_sae(tmp_path, layer=6)
    with pytest.raises(InputError) as excinfo:
        load_sae(str(path), n_layers=4)
    message = one_line_error(excinfo)
    assert "layer 6" in message and "4 layers" in message


def test_unsupported_architecture(tmp_path: Path):
    path = saved_sae(tmp_path)
    cfg = json.loads((path / S.SAE_CFG_FILENAME).read_text())
    cfg["architecture"] = "transcoder"
    (path / S.SAE_CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(InputError) as excinfo:
        load_sae(str(path))
    assert "transcoder" in one_line_error(excinfo)


def test_load_saes_validates_everything_before_reading_weights(tmp_path: Path, monkeypatch):
    good = saved_sae(tmp_path, name="good", layer=1)
    bad = saved_sae(tmp_path, name="bad", layer=2)
    (bad / S.SAE_WEIGHTS_FILENAME).unlink()
    calls: list[SAESpec] = []
    real = S._load_weights
    monkeypatch.setattr(S, "_load_weights", lambda spec, **kw: calls.append(spec) or real(spec, **kw))
    with pytest.raises(InputError) as excinfo:
        load_saes([str(good), str(bad)], d_model=64, n_layers=4)
    assert S.SAE_WEIGHTS_FILENAME in one_line_error(excinfo)
    assert calls == []  # the good SAE's weights were not read either

    other = saved_sae(tmp_path, name="other", layer=3)
    saes = load_saes([str(other), str(good)], d_model=64, n_layers=4)
    assert list(saes) == [1, 3]
    with pytest.raises(InputError) as excinfo:
        load_saes([str(good), f"1={other}"])  # explicit 1 vs hook 3
    one_line_error(excinfo)
    dup = saved_sae(tmp_path, name="dup", layer=1)
    with pytest.raises(InputError) as excinfo:
        load_saes([str(good), str(dup)])
    assert "two SAEs for layer 1" in one_line_error(excinfo)


def test_sae_for_layer_lists_the_layers_that_have_one():
    saes = {1: object(), 3: object()}
    assert S.sae_for_layer(saes, 3) is saes[3]
    with pytest.raises(InputError) as excinfo:
        S.sae_for_layer(saes, 2)
    message = one_line_error(excinfo)
    assert "layer 2" in message and "1, 3" in message


# ------------------------------------------------------------------------------------------
# Registry releases
# ------------------------------------------------------------------------------------------


def test_unknown_release_lists_close_names():
    with pytest.raises(InputError) as excinfo:
        load_sae("gemma-scope-2b-pt-res-canonicl:layer_12/width_16k/canonical")
    message = one_line_error(excinfo)
    assert "unknown SAE release" in message and GEMMA_RELEASE in message


def test_unknown_sae_id_lists_close_ids():
    with pytest.raises(InputError) as excinfo:
        load_sae(f"{GEMMA_RELEASE}:layer_12/width_16k/canonicl")
    message = one_line_error(excinfo)
    assert GEMMA_ID in message
    with pytest.raises(InputError) as excinfo:
        load_sae(f"{LLAMA_RELEASE}:l13r_8")
    assert LLAMA_ID in one_line_error(excinfo)


def test_registry_maps_our_targets_to_the_files_we_lay_out():
    """The cache layouts below rely on these registry entries; fail loudly if they move."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    gemma = directory[GEMMA_RELEASE]
    assert (gemma.repo_id, gemma.conversion_func) == (GEMMA_SCOPE_REPO, "gemma_2")
    assert gemma.saes_map[GEMMA_ID] == "layer_12/width_16k/average_l0_82"
    llama = directory[LLAMA_RELEASE]
    assert (llama.repo_id, llama.conversion_func) == (LLAMA_SCOPE_LXR_8X_REPO, "llama_scope")
    assert llama.saes_map[LLAMA_ID] == "Llama3_1-8B-Base-L13R-8x"
    assert math.isclose(llama.norm_scaling_factor[LLAMA_ID], 7.26241134751773)


def test_gemma_scope_loads_offline_from_hf_cache(tmp_path: Path, monkeypatch):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    hub = use_offline_hf_cache(monkeypatch, tmp_path)
    params = layout_gemma_scope(hub, "layer_12/width_16k/average_l0_82", d_in=64)
    # sae-lens hard-codes Gemma-2-2B's d_in (2304) for this repo; shrink it through the
    # registry's own config_overrides hook. Everything else (repo id, folder, params.npz,
    # key conversion, d_sae from "width_16k", hook name) is sae-lens's real path.
    monkeypatch.setattr(get_pretrained_saes_directory()[GEMMA_RELEASE], "config_overrides", {"d_in": 64})

    spec = SAESpec.parse(f"{GEMMA_RELEASE}:{GEMMA_ID}")
    assert S.resolve_spec(spec, d_model=64, n_layers=26).layer == 12
    sae = load_sae(spec, d_model=64, n_layers=26)
    assert sae.cfg.architecture() == "jumprelu"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (64, 16384)
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_resid_post"
    for key, value in params.items():
        np.testing.assert_array_equal(sae.state_dict()[key].numpy(), value)
    info = S.describe_sae(sae, spec)
    assert (info["release"], info["sae_id"], info["layer"]) == (GEMMA_RELEASE, GEMMA_ID, 12)
    assert json.loads(json.dumps(info)) == info

    with pytest.raises(InputError) as excinfo:  # hook says 12
        load_sae(f"16={GEMMA_RELEASE}:{GEMMA_ID}")
    one_line_error(excinfo)
    with pytest.raises(InputError) as excinfo:  # files for layer 16 are not in the cache
        load_sae(f"{GEMMA_RELEASE}:layer_16/width_16k/canonical")
    message = one_line_error(excinfo)
    assert "could not load" in message and "offline" in message


def test_llama_scope_loads_offline_from_hf_cache(tmp_path: Path, monkeypatch):
    hub = use_offline_hf_cache(monkeypatch, tmp_path)
    hyper, raw = layout_llama_scope(hub, 13, d_in=64, d_sae=512)

    spec = SAESpec.parse(f"{LLAMA_RELEASE}:{LLAMA_ID}")
    sae = load_sae(spec, d_model=64, n_layers=32)
    assert sae.cfg.architecture() == "jumprelu"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (64, 512)
    assert sae.cfg.metadata.hook_name == "blocks.13.hook_resid_post"
    # sae-lens's conversion: transpose, fold the registry's norm scaling factor into the
    # weights, and a scalar JumpReLU threshold rescaled by sqrt(d_in) / dataset norm.
    s = 7.26241134751773
    torch.testing.assert_close(sae.W_enc, raw["encoder.weight"].float().T * s)
    torch.testing.assert_close(sae.W_dec, raw["decoder.weight"].float().T / s)
    torch.testing.assert_close(sae.b_enc, raw["encoder.bias"].float())
    torch.testing.assert_close(sae.b_dec, raw["decoder.bias"].float() / s)
    expected_threshold = hyper["jump_relu_threshold"] * math.sqrt(64) / hyper["dataset_average_activation_norm"]["in"]
    torch.testing.assert_close(sae.threshold, torch.full((512,), expected_threshold), rtol=1e-2, atol=1e-3)

    with pytest.raises(InputError) as excinfo:
        load_sae(spec, d_model=4096)
    message = one_line_error(excinfo)
    assert "d_in=64" in message and "4096" in message


# ------------------------------------------------------------------------------------------
# Tensor helpers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_SAE_ARCHITECTURES)
def test_encode_decode_error_identity(arch: str):
    sae = make_tiny_sae(arch)
    x = torch.randn(2, 6, 64, dtype=torch.float64) * 4
    codes = S.encode(sae, x)
    assert codes.shape == (2, 6, 128) and codes.dtype == torch.float32
    recon = S.decode(sae, codes)
    error = S.sae_error(sae, x)
    torch.testing.assert_close(recon + error, x.float(), rtol=0, atol=1e-5)
    rows = S.decoder_rows(sae)
    assert rows.shape == (128, 64) and not rows.requires_grad
    # Each latent adds code * row to the reconstruction.
    torch.testing.assert_close(recon - S.decode(sae, torch.zeros_like(codes)), codes @ rows)


def test_encode_keeps_gradients():
    sae = make_tiny_sae("standard")
    x = torch.randn(3, 64, requires_grad=True)
    S.encode(sae, x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_codes_to_csr_roundtrip_and_threshold():
    codes = torch.tensor(
        [
            [0.0, 0.5, 0.0, 2.0],
            [0.0, 0.0, 0.0, 0.0],
            [1.0, 0.05, -3.0, 0.0],
        ]
    )
    indptr, indices, values = codes_to_csr(codes)
    assert indptr.dtype == np.int64 and indices.dtype == np.int32 and values.dtype == np.float32
    np.testing.assert_array_equal(indptr, [0, 2, 2, 5])
    np.testing.assert_array_equal(indices, [1, 3, 0, 1, 2])
    np.testing.assert_array_equal(values, np.float32([0.5, 2.0, 1.0, 0.05, -3.0]))

    indptr, indices, values = codes_to_csr(codes.numpy(), threshold=0.1)
    np.testing.assert_array_equal(indptr, [0, 2, 2, 4])
    np.testing.assert_array_equal(indices, [1, 3, 0, 2])

    indptr, indices, values = codes_to_csr(torch.zeros(0, 8))
    np.testing.assert_array_equal(indptr, [0])
    assert indices.size == values.size == 0

    with pytest.raises(ValueError):
        codes_to_csr(torch.zeros(2, 3, 4))


def test_codes_to_csr_matches_dense_for_real_codes():
    sae = make_tiny_sae("topk", k=5)
    codes = S.encode(sae, torch.randn(20, 64) * 3).detach()
    indptr, indices, values = codes_to_csr(codes.to(torch.bfloat16))
    dense = np.zeros(codes.shape, dtype=np.float32)
    for row in range(codes.shape[0]):
        lo, hi = indptr[row], indptr[row + 1]
        assert hi - lo <= 5 and np.all(np.diff(indices[lo:hi]) > 0)
        dense[row, indices[lo:hi]] = values[lo:hi]
    np.testing.assert_array_equal(dense, codes.to(torch.bfloat16).float().numpy())

"""SAE splice / latent edits and direction interventions on tiny HF models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cache import sae as S
from cache.directions import direction_ablation, direction_addition
from cache.hooks import capture_resid, decoder_layers, kv_cache_kwargs
from cache.interventions import (
    LatentEdit,
    RowMaskEdit,
    apply_edits,
    sae_edits,
    sae_splice,
)
from store.errors import InputError
from tests.checks import one_line_error
from tests.tiny_models import (
    TINY_FAMILIES,
    TINY_SAE_ARCHITECTURES,
    layout_gemma_scope,
    layout_llama_scope,
    make_tiny_model,
    make_tiny_sae,
    tiny_input_ids,
    use_offline_hf_cache,
)

ATOL = 1e-5


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def active_latents(sae, resid: torch.Tensor) -> tuple[int, ...]:
    codes = S.encode(sae, resid)
    return tuple((codes > 0).reshape(-1, codes.shape[-1]).any(0).nonzero().flatten().tolist())


def resid_at(model: nn.Module, ids: torch.Tensor, layer: int) -> torch.Tensor:
    with torch.no_grad(), capture_resid(model, [layer]) as cap:
        model(ids)
    return cap[layer][0]


# ------------------------------------------------------------------------------------------
# Layer convention
# ------------------------------------------------------------------------------------------


def test_layer_l_is_block_output_and_hidden_states_l_plus_1(tiny_model):
    ids = tiny_input_ids()
    n = len(decoder_layers(tiny_model))
    with torch.no_grad(), capture_resid(tiny_model, range(n)) as cap:
        out = tiny_model(ids, output_hidden_states=True)
    for layer in range(n - 1):  # the last hidden state is after the final norm
        torch.testing.assert_close(cap[layer][0], out.hidden_states[layer + 1], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# SAE splice
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_SAE_ARCHITECTURES)
def test_empty_edit_leaves_logits_unchanged(tiny_model, arch: str):
    ids = tiny_input_ids(3, 9)
    base = logits(tiny_model, ids)
    saes = {1: make_tiny_sae(arch, layer=1), 2: make_tiny_sae(arch, layer=2, seed=1)}
    with sae_edits(tiny_model, saes, [], record=True) as rec:
        spliced = logits(tiny_model, ids)
    torch.testing.assert_close(spliced, base, rtol=0, atol=ATOL)
    # The splice did run, and the SAE is far from perfect: without the error term the
    # logits would move.
    assert set(rec.clean) == {1, 2}
    assert all(err[0].mean() > 0.1 * resid_at(tiny_model, ids, layer).norm(dim=-1).mean()
               for layer, err in rec.error_norm.items())
    # Hooks are gone after the block.
    torch.testing.assert_close(logits(tiny_model, ids), base, rtol=0, atol=0)


def test_empty_edit_is_bit_exact_for_a_bfloat16_model(tiny_gemma2):
    """The splice computes in the SAE's float32; rounding back to bf16 restores x exactly."""
    model = tiny_gemma2.to(torch.bfloat16)
    ids = tiny_input_ids(3, 9)
    base = logits(model, ids)
    with sae_edits(model, {1: make_tiny_sae("jumprelu", layer=1)}):
        assert torch.equal(logits(model, ids), base)


def test_without_error_term_logits_would_change(tiny_qwen2):
    """Guard for the test above: the reconstruction alone is not the residual."""
    ids = tiny_input_ids()
    sae = make_tiny_sae("jumprelu", layer=1)
    base = logits(tiny_qwen2, ids)

    def recon_only(_m, _a, out):
        return S.decode(sae, S.encode(sae, out))

    handle = decoder_layers(tiny_qwen2)[1].register_forward_hook(recon_only)
    try:
        assert (logits(tiny_qwen2, ids) - base).abs().max() > 1e-2
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", TINY_SAE_ARCHITECTURES)
def test_ablating_all_active_latents_changes_logits(tiny_model, arch: str):
    ids = tiny_input_ids()
    sae = make_tiny_sae(arch, layer=2)
    base = logits(tiny_model, ids)
    latents = active_latents(sae, resid_at(tiny_model, ids, 2))
    assert latents
    with sae_edits(tiny_model, {2: sae}, [LatentEdit(layer=2, latents=latents)], record=True) as rec:
        ablated = logits(tiny_model, ids)
    assert (ablated - base).abs().max() > 1e-2
    assert torch.all(rec.edited[2][0][..., list(latents)] == 0)
    # The residual became exactly decode(0 for those latents) + error.
    resid = resid_at(tiny_model, ids, 2)
    expected = S.decode(sae, rec.edited[2][0]) + S.sae_error(sae, resid)
    with sae_edits(tiny_model, {2: sae}, [LatentEdit(layer=2, latents=latents)]):
        got = resid_at(tiny_model, ids, 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_scale_and_clamp_change_codes_as_specified(tiny_qwen2):
    ids = tiny_input_ids(2, 6)
    sae = make_tiny_sae("standard", layer=1)
    clean = S.encode(sae, resid_at(tiny_qwen2, ids, 1))
    latents = active_latents(sae, resid_at(tiny_qwen2, ids, 1))[:4]
    edits = [
        LatentEdit(layer=1, latents=latents[:2], mode="scale", value=-3.0),
        LatentEdit(layer=1, latents=latents[2:], mode="clamp", value=5.0, positions=(-1,)),
    ]
    with sae_edits(tiny_qwen2, {1: sae}, edits, record=True) as rec:
        logits(tiny_qwen2, ids)
    torch.testing.assert_close(rec.clean[1][0], clean)
    edited = rec.edited[1][0]
    expected = clean.clone()
    expected[..., list(latents[:2])] *= -3.0
    expected[:, -1, list(latents[2:])] = 5.0
    torch.testing.assert_close(edited, expected, rtol=0, atol=0)
    # Positions other than the last keep their clean codes for the clamped latents.
    torch.testing.assert_close(edited[:, :-1, list(latents[2:])], clean[:, :-1, list(latents[2:])])


def test_edits_apply_in_order_and_only_to_chosen_rows():
    codes = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5) + 1
    out = apply_edits(
        codes,
        [
            LatentEdit(layer=0, latents=(1, 3), mode="clamp", value=10.0, rows=(1,)),
            LatentEdit(layer=0, latents=(3,), mode="scale", value=0.5, positions=(0, -1)),
        ],
    )
    expected = codes.clone()
    expected[1, :, [1, 3]] = 10.0
    expected[:, [0, 2], 3] *= 0.5
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert apply_edits(codes, []) is codes


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_row_masks_match_separate_runs(tiny_model, arch: str):
    """One batched forward over B copies of a prompt == B separate ablation runs."""
    layer = 1
    sae = make_tiny_sae(arch, layer=layer)
    prompt = tiny_input_ids(1, 8)
    latents = active_latents(sae, resid_at(tiny_model, prompt, layer))
    assert len(latents) >= 3
    variants = [(), latents[:1], latents[1:3], latents]
    mask = torch.zeros(len(variants), int(sae.cfg.d_sae), dtype=torch.bool)
    for row, subset in enumerate(variants):
        mask[row, list(subset)] = True
    batch = prompt.repeat(len(variants), 1)

    with sae_edits(tiny_model, {layer: sae}, [RowMaskEdit(layer=layer, mask=mask)]):
        batched = logits(tiny_model, batch)
    row_edits = [LatentEdit(layer=layer, latents=s, rows=(r,)) for r, s in enumerate(variants) if s]
    with sae_edits(tiny_model, {layer: sae}, row_edits):
        batched_rows = logits(tiny_model, batch)

    for row, subset in enumerate(variants):
        edits = [LatentEdit(layer=layer, latents=subset)] if subset else []
        with sae_edits(tiny_model, {layer: sae}, edits):
            single = logits(tiny_model, prompt)
        torch.testing.assert_close(batched[row : row + 1], single, rtol=1e-4, atol=ATOL)
        torch.testing.assert_close(batched_rows[row : row + 1], single, rtol=1e-4, atol=ATOL)
    assert (batched[0] - batched[-1]).abs().max() > 1e-2


def test_row_mask_with_positions_and_clamp():
    codes = torch.ones(2, 4, 3)
    mask = torch.tensor([[True, False, False], [False, True, True]])
    out = apply_edits(codes, [RowMaskEdit(layer=0, mask=mask, mode="clamp", value=7.0, positions=(-2, -1))])
    expected = codes.clone()
    expected[0, 2:, 0] = 7.0
    expected[1, 2:, 1:] = 7.0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_edits_are_differentiable_for_attribution(tiny_qwen2):
    """A code transform may interpolate codes; gradients flow back to the scale factor."""
    ids = tiny_input_ids(1, 5)
    sae = make_tiny_sae("jumprelu", layer=1)
    alpha = torch.tensor(0.5, requires_grad=True)

    def interpolate(_layer, codes, _past):
        return codes * alpha

    with sae_splice(tiny_qwen2, {1: sae}, interpolate):
        out = tiny_qwen2(ids).logits[0, -1, 3]
    out.backward()
    assert alpha.grad is not None and alpha.grad.abs() > 0


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_explicit_position_edits_never_leak_into_decode_steps(family):
    """A prompt-position edit must not touch cached decode steps, with ``generate`` and with a
    hand-written loop on this transformers version's cache API (the cache keyword was renamed
    in transformers 5, which once made every decode step look like a prompt forward)."""
    model = make_tiny_model(family).eval()
    ids = tiny_input_ids(2, 6)
    sae = make_tiny_sae("topk", layer=2)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        base = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        with sae_edits(model, {2: sae}, [], record=True) as rec:
            spliced = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        assert torch.equal(base, spliced)
        assert [c.shape[1] for c in rec.clean[2]] == [6, 1, 1, 1]  # prefill + cached steps

        latents = active_latents(sae, resid_at(model, ids, 2))
        edit = LatentEdit(layer=2, latents=latents, mode="clamp", value=3.0, positions=(-1,))
        with sae_edits(model, {2: sae}, [edit], record=True) as rec:
            model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        with sae_edits(model, {2: sae}, [edit], record=True) as loop_rec:
            kv_cache = kv_cache_kwargs(model)
            output = model(ids, **kv_cache)
            for _ in range(3):
                output = model(output.logits[:, -1:].argmax(-1), **kv_cache)
    for recorded in (rec, loop_rec):
        assert [c.shape[1] for c in recorded.edited[2]] == [6, 1, 1, 1]
        assert torch.all(recorded.edited[2][0][:, -1, list(latents)] == 3.0)
        for clean, edited in zip(recorded.clean[2][1:], recorded.edited[2][1:]):
            assert torch.equal(clean, edited), "a prompt-position edit leaked into a decode step"


def test_kv_cache_kwargs_use_the_current_cache_keyword(tiny_qwen2):
    """The hand-written decoding loop uses the forward's own cache keyword, so the newest
    transformers warns of no deprecated argument."""
    import inspect
    import warnings

    kv_cache = kv_cache_kwargs(tiny_qwen2)
    (keyword,) = set(kv_cache) - {"use_cache"}
    assert keyword in inspect.signature(tiny_qwen2.forward).parameters
    ids = tiny_input_ids(1, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            out = tiny_qwen2(ids, **kv_cache)
            tiny_qwen2(out.logits[:, -1:].argmax(-1), **kv_cache)
    assert kv_cache[keyword].get_seq_length() == 6


def test_hooks_are_removed_on_exceptions(tiny_qwen2):
    ids = tiny_input_ids()
    base = logits(tiny_qwen2, ids)
    sae = make_tiny_sae("standard", layer=1)
    latents = active_latents(sae, resid_at(tiny_qwen2, ids, 1))
    with pytest.raises(RuntimeError, match="boom"):
        with sae_edits(tiny_qwen2, {1: sae}, [LatentEdit(layer=1, latents=latents)]):
            raise RuntimeError("boom")
    with pytest.raises(InputError):
        with sae_edits(tiny_qwen2, {1: sae}, [LatentEdit(layer=1, latents=latents, positions=(40,))]):
            logits(tiny_qwen2, ids)  # position 40 is outside the 7-token prompt
    with pytest.raises(RuntimeError, match="boom"):
        with direction_ablation(tiny_qwen2, torch.randn(64)):
            raise RuntimeError("boom")
    for layer in decoder_layers(tiny_qwen2):
        assert not layer._forward_hooks and not layer._forward_pre_hooks
    torch.testing.assert_close(logits(tiny_qwen2, ids), base, rtol=0, atol=0)


def test_bad_edits_raise_one_line_input_errors(tiny_qwen2):
    sae = make_tiny_sae("standard", layer=1)
    cases = [
        lambda: sae_edits(tiny_qwen2, {1: sae}, [LatentEdit(layer=2, latents=(0,))]).__enter__(),
        lambda: sae_edits(tiny_qwen2, {1: sae}, [LatentEdit(layer=1, latents=(128,))]).__enter__(),
        lambda: sae_edits(tiny_qwen2, {1: sae}, [RowMaskEdit(layer=1, mask=torch.zeros(2, 64, dtype=torch.bool))]).__enter__(),
        lambda: sae_edits(tiny_qwen2, {7: sae}, []).__enter__(),
        lambda: sae_edits(tiny_qwen2, {1: make_tiny_sae("standard", d_in=32)}, []).__enter__(),
        lambda: LatentEdit(layer=1, latents=()),
        lambda: LatentEdit(layer=1, latents=(-1,)),
        lambda: LatentEdit(layer=1, latents=(1,), mode="zero"),
        lambda: LatentEdit(layer=1, latents=(1,), mode="scale"),
        lambda: LatentEdit(layer=1, latents=(1,), mode="clamp", value=float("nan")),
        lambda: LatentEdit(layer=1, latents=(1,), mode="ablate", value=2.0),
        lambda: LatentEdit(layer=-1, latents=(1,)),
        lambda: LatentEdit(layer=1, latents=(1,), positions=()),
        lambda: RowMaskEdit(layer=1, mask=torch.zeros(64)),
        lambda: direction_ablation(tiny_qwen2, torch.zeros(64)).__enter__(),
        lambda: direction_ablation(tiny_qwen2, torch.ones(32)).__enter__(),
        lambda: direction_addition(tiny_qwen2, torch.ones(64), layer=4).__enter__(),
    ]
    for case in cases:
        with pytest.raises(InputError) as excinfo:
            case()
        one_line_error(excinfo)
    for layer in decoder_layers(tiny_qwen2):
        assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_latent_edit_normalises_sequences():
    edit = LatentEdit(layer=1, latents=[3, 1], mode="scale", value=2, positions=[-1], rows=[0])
    assert edit.latents == (3, 1) and edit.positions == (-1,) and edit.rows == (0,)
    assert edit.value == 2.0 and isinstance(edit.value, float)
    assert hash(edit) == hash(LatentEdit(layer=1, latents=(3, 1), mode="scale", value=2.0, positions=(-1,), rows=(0,)))


class _TupleBlock(nn.Module):
    """A decoder block that returns a tuple, like older transformers versions."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (hidden_states + torch.tanh(self.lin(hidden_states)), None)


class _TupleModel(nn.Module):
    def __init__(self, d: int = 64, n: int = 3) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(_TupleBlock(d) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model.layers:
            x = layer(x)[0]
        return x


def test_tuple_block_outputs_are_handled():
    torch.manual_seed(0)
    model = _TupleModel()
    x = torch.randn(2, 5, 64)
    sae = make_tiny_sae("jumprelu", layer=1)
    with torch.no_grad():
        base = model(x)
        with sae_edits(model, {1: sae}):
            same = model(x)
        with capture_resid(model, [1]) as cap:
            model(x)
        latents = active_latents(sae, cap[1][0])
        with sae_edits(model, {1: sae}, [LatentEdit(layer=1, latents=latents)]):
            changed = model(x)
        with direction_ablation(model, torch.randn(64)):
            ablated = model(x)
    torch.testing.assert_close(same, base, rtol=0, atol=ATOL)
    assert (changed - base).abs().max() > 1e-3
    assert (ablated - base).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------
# Directions
# ------------------------------------------------------------------------------------------


def test_direction_ablation_removes_the_projection_everywhere(tiny_model):
    ids = tiny_input_ids(2, 7)
    torch.manual_seed(3)
    direction = torch.randn(64) * 5
    unit = direction / direction.norm()
    layers = decoder_layers(tiny_model)
    n = len(layers)
    base = logits(tiny_model, ids)

    mids: list[torch.Tensor] = []  # residual inside each block, seen by the second norm
    with torch.no_grad(), direction_ablation(tiny_model, direction):
        handles = [
            layer.pre_feedforward_layernorm.register_forward_pre_hook(lambda _m, a: mids.append(a[0]))
            if hasattr(layer, "pre_feedforward_layernorm")
            else layer.post_attention_layernorm.register_forward_pre_hook(lambda _m, a: mids.append(a[0]))
            for layer in layers
        ]
        try:
            with capture_resid(tiny_model, range(n)) as cap:
                ablated = tiny_model(ids).logits
        finally:
            for h in handles:
                h.remove()
    for layer in range(n):
        resid = cap[layer][0]
        proj = resid @ unit
        assert proj.abs().max() < 1e-4 * resid.norm(dim=-1).max(), (layer, proj.abs().max())
    # Inside each block too: the residual between attention and MLP (input of Llama/Qwen2's
    # post_attention_layernorm, of Gemma2's pre_feedforward_layernorm).
    assert len(mids) == n
    for mid in mids:
        assert (mid @ unit).abs().max() < 1e-4 * mid.norm(dim=-1).max()
    assert (ablated - base).abs().max() > 1e-3
    # Without the ablation the residual has a sizeable projection.
    assert (resid_at(tiny_model, ids, 1) @ unit).abs().max() > 1e-2
    torch.testing.assert_close(logits(tiny_model, ids), base, rtol=0, atol=0)


def test_direction_addition_adds_at_one_layer(tiny_qwen2):
    ids = tiny_input_ids()
    direction = torch.randn(64)
    before = resid_at(tiny_qwen2, ids, 2)
    with direction_addition(tiny_qwen2, direction, layer=2, coeff=2.5):
        after = resid_at(tiny_qwen2, ids, 2)
        later = resid_at(tiny_qwen2, ids, 3)
    torch.testing.assert_close(after, before + 2.5 * direction, rtol=1e-6, atol=1e-5)
    assert (later - resid_at(tiny_qwen2, ids, 3)).abs().max() > 1e-3


def test_capture_can_stop_the_forward_early(tiny_qwen2):
    ids = tiny_input_ids()
    reached: list[int] = []
    handle = decoder_layers(tiny_qwen2)[3].register_forward_hook(lambda *_: reached.append(3))
    try:
        with torch.no_grad(), capture_resid(tiny_qwen2, [0, 1], stop=True) as cap:
            tiny_qwen2(ids)
            pytest.fail("the forward should have been cut short")
    finally:
        handle.remove()
    assert reached == []
    torch.testing.assert_close(cap[1][0], resid_at(tiny_qwen2, ids, 1))


# ------------------------------------------------------------------------------------------
# Registry SAEs (laid out in an offline HF cache) spliced into tiny models
# ------------------------------------------------------------------------------------------


def test_gemma_scope_and_llama_scope_splice_offline(tmp_path, monkeypatch):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    hub = use_offline_hf_cache(monkeypatch, tmp_path)
    layout_gemma_scope(hub, "layer_12/width_16k/average_l0_82", d_in=64)
    monkeypatch.setattr(
        get_pretrained_saes_directory()["gemma-scope-2b-pt-res-canonical"], "config_overrides", {"d_in": 64}
    )
    layout_llama_scope(hub, 13, d_in=64, d_sae=512)

    cases = [
        ("gemma2", 13, "gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical", 12),
        ("llama", 14, "llama_scope_lxr_8x:l13r_8x", 13),
    ]
    for family, n_layers, spec, layer in cases:
        model = make_tiny_model(family, n_layers=n_layers)
        saes = S.load_saes([spec], d_model=model.config.hidden_size, n_layers=n_layers)
        assert list(saes) == [layer]
        ids = tiny_input_ids(2, 6)
        base = logits(model, ids)
        with sae_edits(model, saes):
            torch.testing.assert_close(logits(model, ids), base, rtol=0, atol=ATOL)
        latents = active_latents(saes[layer], resid_at(model, ids, layer))
        assert latents, family
        with sae_edits(model, saes, [LatentEdit(layer=layer, latents=latents)]):
            assert (logits(model, ids) - base).abs().max() > 1e-3

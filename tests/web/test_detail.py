"""The cached feature detail equals explorer.browse.feature_detail, field by field."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.browse import FeatureDetail, feature_detail
from refusal_web.context import WebContext
from store import InputError


def assert_same(fast: FeatureDetail, slow: FeatureDetail) -> None:
    assert (fast.layer, fast.latent, fast.stats) == (slow.layer, slow.latent, slow.stats)
    assert [(e.prompt, e.label, e.tokens, e.peak_position, e.peak_value) for e in fast.examples] == \
        [(e.prompt, e.label, e.tokens, e.peak_position, e.peak_value) for e in slow.examples]
    for mine, theirs in zip(fast.examples, slow.examples):
        np.testing.assert_array_equal(mine.activations, theirs.activations)
    for mine, theirs in zip(fast.histogram, slow.histogram):
        np.testing.assert_array_equal(mine, theirs)
    assert (fast.logit_lens_top, fast.logit_lens_bottom) == (slow.logit_lens_top, slow.logit_lens_bottom)
    assert fast.fm_partners == pytest.approx(slow.fm_partners)
    assert (fast.minimal_sets, fast.dormant) == (slow.minimal_sets, slow.dormant)


@pytest.mark.parametrize("latent", [3, 17, 42, 7, 77, 0, 1, 255, 300, 511])
def test_cached_detail_matches_browse(ctx: WebContext, latent: int) -> None:
    assert_same(ctx.details.feature_detail(6, latent), feature_detail(ctx.study, 6, latent, "default"))


def test_cached_detail_with_fewer_examples_and_no_analyses(ctx: WebContext, bare_ctx: WebContext) -> None:
    assert_same(ctx.details.feature_detail(6, 101, k=3), feature_detail(ctx.study, 6, 101, "default", k=3))
    for latent in range(0, 32, 5):
        assert_same(bare_ctx.details.feature_detail(2, latent), feature_detail(bare_ctx.study, 2, latent))


def test_cached_detail_rejects_out_of_range(ctx: WebContext) -> None:
    with pytest.raises(InputError, match="out of range"):
        ctx.details.feature_detail(6, 512)

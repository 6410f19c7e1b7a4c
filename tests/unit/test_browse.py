"""The UI-free view models both viewers render, on a synthetic study with planted latents."""

from pathlib import Path

import numpy as np
import pytest

from explorer.browse import StudyBrowser, analyses_present, feature_table, prompt_view, text_plot
from explorer.results import RESULT_TYPES
from tests.synthetic import SyntheticConfig, make_synthetic_study
from store import InputError, Study

CONFIG = SyntheticConfig()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    path = make_synthetic_study(tmp_path_factory.mktemp("browse") / "s.h5", CONFIG)
    with Study(path) as opened:
        yield opened


def test_feature_table_columns_sort_and_filter(study: Study) -> None:
    table = feature_table(study, 6)
    assert len(table) == CONFIG.d_sae
    planted = list(CONFIG.refusal_latents)
    # planted refusal latents fire on every harmful prompt's template tokens
    assert (table.columns["freq_harmful"][planted] == 1.0).all()
    assert set(table.order("freq_diff")[:5]) == set(planted)
    assert set(table.filter("dormant")) == set(CONFIG.dormant_latents)
    assert set(table.filter("minimal")) == {3, 17, 42, 101, 250}
    assert set(table.filter("freq_harmful>=1 minimal")) == set(planted)
    assert list(table.filter("42")) == [42] + [i for i in range(420, 430)]
    with pytest.raises(InputError, match="unknown filter word 'nonsense'"):
        table.filter("nonsense")  # a typo is said, never silently matches nothing
    fm_rows = table.filter("fm")
    assert set(planted) <= set(fm_rows) and np.isnan(table.columns["fm_weight"][np.setdiff1d(np.arange(len(table)), fm_rows)]).all()


@pytest.mark.parametrize("latent", [3, 17, 0, 255, 7])
def test_feature_detail_matches_per_prompt_codes(study: Study, latent: int) -> None:
    detail = StudyBrowser(study).feature_detail(6, latent, k=5)
    codes = study.codes(6)
    rows, values = codes.latent_entries(latent)
    assert detail.stats["active_tokens"] == len(values)
    assert len(detail.examples) == min(5, len(set(np.searchsorted(study.token_offsets, rows, side="right") - 1)))
    for example in detail.examples:
        # an independent read: the prompt's CSR codes, densified
        np.testing.assert_array_equal(example.activations, codes.prompt_dense(example.prompt, np.array([latent]))[:, 0])
        assert example.activations[example.peak_position] == example.peak_value
        assert example.tokens == study.prompt(example.prompt).tokens
    peaks = [e.peak_value for e in detail.examples]
    assert peaks == sorted(peaks, reverse=True)
    if latent == 7:  # dormant: silent at baseline
        assert detail.examples == [] and detail.dormant["baseline"] == 0.0


def test_prompt_view_colours_tokens_and_lists_ablations(study: Study) -> None:
    view = prompt_view(study, 0, 6, 17)
    assert len(view.colour) == len(view.tokens) and view.colour[-3:].min() > 4.0
    assert [list(latents) for latents, _, _ in view.ablations] == [[3, 17, 42]]


def test_analyses_present_and_text_plot(study: Study, tmp_path: Path) -> None:
    present = analyses_present(study)
    assert list(present)[:2] == ["refusal-tokens", "direction"] and list(present)[-1] == "evaluate"  # pipeline order
    # the synthetic study holds the first paper's stages; each later one names its command
    assert all(present[kind.STAGE] is None for kind in RESULT_TYPES)
    assert {stage: command for stage, command in present.items() if command is not None} == {
        "refusal-tokens": "refusal-explorer analyze refusal-tokens", "graph": "refusal-explorer analyze graph",
        "categories": "refusal-explorer analyze categories", "jailbreak": "refusal-explorer analyze jailbreak",
        "probe": "refusal-explorer analyze probe", "evaluate": "refusal-explorer evaluate",
    }
    assert analyses_present(study, run="other")["greedy"] == "refusal-explorer analyze greedy"
    plot = text_plot(np.array([1, 2, 3]), np.array([0.5, -1.0, 2.0]), width=20, height=5)
    assert plot.count("●") == 3 and "2.00" in plot and "-1.00" in plot


def test_a_study_without_sae_codes_says_which_stages_need_them(tmp_path: Path) -> None:
    import explorer.cli  # noqa: F401  (registers the stages)
    from explorer.browse import NEEDS_SAE_CODES, SAE_FREE_STAGES, next_step
    from explorer.cli.shell import STAGES
    import dataclasses

    from store import StudyWriter
    from tests import study_factory

    assert SAE_FREE_STAGES == {s.name for s in STAGES if not s.needs_sae} | {"evaluate"}  # the CLI's list, for the viewers
    path = tmp_path / "codeless.h5"
    with StudyWriter.create(path, dataclasses.replace(study_factory.spec(), sae_layers={}, sae_arrays={})) as writer:
        writer.append(dataclasses.replace(study_factory.batch(0), codes={}))
        writer.finalize()
    with Study(path) as opened:
        present = analyses_present(opened)
    assert present["direction"] == "refusal-explorer analyze direction" and present["evaluate"] == "refusal-explorer evaluate"
    assert present["candidates"] == present["greedy"] == present["probe"] == NEEDS_SAE_CODES
    assert next_step(present["candidates"]).startswith("needs SAE codes") and next_step(present["direction"]).startswith("run: ")

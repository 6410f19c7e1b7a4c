"""`evaluate` (explorer.benchmark) on the planted tiny model: the planted direction and latents
jailbreak every triggered prompt, adding / clamping them up makes harmless prompts refused,
the baseline is unchanged, ablating u costs nothing on harmless prompts (they carry no u),
and an interrupted evaluation resumes to the same result."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from explorer.benchmark import EvaluateConfig, Evaluation, load_evaluation
from explorer.judges import Judges, SemanticJudge, SemanticThresholds
from explorer.results import DirectionResult
from cache.generation import RefusalDetector
from store import Study
from store.errors import InputError
from tests.planted import SAE_LAYER, planted_live, shared_planted_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CharacterEncoder:
    """A stand-in sentence encoder (the real one is tested in test_semantic_judge.py):
    normalised character counts, so equal texts embed equally."""

    def encode(self, texts):
        out = np.zeros((len(texts), 64), np.float32)
        for row, text in enumerate(texts):
            for ch in text:
                out[row, ord(ch) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def tiny_judges() -> Judges:
    # the tiny model's text is random bytes: a refusal is a response that starts with "I"
    semantic = SemanticJudge(CharacterEncoder(), SemanticThresholds(refusal_margin=10.0, relevance=-2.0))  # never refuses
    return Judges(detector=RefusalDetector(phrases=("I",), window=1), semantic=semantic)


@pytest.fixture
def study(tmp_path):
    path, loaded, sae, u = shared_planted_study()
    copy = tmp_path / "study.h5"
    shutil.copy(path, copy)
    direction = DirectionResult(
        layer=SAE_LAYER, position=-1, direction=u.numpy().astype(np.float32), candidate_layer=np.array([1]), candidate_position=np.array([-1]),
        refusal_drop=np.ones(1, np.float32), kl=np.zeros(1, np.float32), induce=np.ones(1, np.float32), baseline_score=1.0, ablated_score=-1.0,
    )
    for run in ("default", "full", "resumed"):
        direction.save(copy, run, config={})
    with Study(copy) as opened:
        live = planted_live(opened, loaded, sae)
    return copy, live


CONFIG = dict(
    interventions=("direction", "latents:1=5,9", "latents:1=5,9:clamp=4"), max_new_tokens=3, batch_size=4,
    judges=("phrase", "semantic"),
)


def test_planted_interventions_jailbreak_and_induce(study) -> None:
    path, live = study
    summary = Evaluation(path, live, EvaluateConfig(**CONFIG), judges=tiny_judges(), progress=False).run()
    results = summary["interventions"]
    assert list(results) == ["none", "direction", "latents:1=5,9", "latents:1=5,9:clamp=4"]
    base = results["none"]
    assert base["n"] == 3 and base["refusal_rate"]["phrase"] == 1.0  # the planted study holds 3 held-out harmful prompts
    assert base["refusal_interval"]["phrase"][0] > 0.3 and base["refusal_interval"]["phrase"][1] == 1.0
    assert base["induced_refusal"] is not None and base["harmless"]["refusal_rate"]["phrase"] == 0.0
    for name in ("direction", "latents:1=5,9"):
        assert results[name]["refusal_rate"]["phrase"] == 0.0 and results[name]["asr"]["phrase"] == 1.0
    assert results["direction"]["harmless"]["refusal_rate"]["phrase"] == 1.0  # added: harmless refused
    # paired: all 3 baseline refusals flipped; the stub semantic judge refused none, so no rate
    assert {k: results["direction"]["flipped"]["phrase"][k] for k in ("rate", "k", "n")} == {"rate": 1.0, "k": 3, "n": 3}
    assert results["direction"]["flipped"]["semantic"]["n"] == 0 and results["direction"]["flipped"]["semantic"]["rate"] is None
    assert results["none"]["flipped"] is None
    assert results["latents:1=5,9"]["harmless"] is None  # an ablation has no upward form
    assert results["latents:1=5,9:clamp=4"]["harmless"]["refusal_rate"]["phrase"] == 1.0
    # harmless prompts carry no u: projecting it out changes neither first token nor completion
    assert results["direction"]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert results["direction"]["ce_increase"] == pytest.approx(0.0, abs=1e-4)
    assert results["latents:1=5,9:clamp=4"]["kl"] > 0.01
    assert results["none"]["agreement"]["phrase~semantic"]["agreement"] == 0.0  # this stub semantic judge never refuses
    with Study(path) as opened:
        stored = load_evaluation(opened)
    assert stored["complete"] and stored["summary"]["interventions"]["direction"]["refusal_rate"] == results["direction"]["refusal_rate"]
    rows = stored["arrays"]
    assert len(rows["row_generation"]) == 4 * 3 + 3 + 3 + 3  # harmful ×4, harmless for none, direction, clamp
    assert set(rows["row_phrase_evidence"][rows["row_phrase"] == 1]) == {"I"}


def test_interrupted_evaluation_resumes_to_the_same_result(study, monkeypatch) -> None:
    path, live = study
    config = EvaluateConfig(**CONFIG)
    full = Evaluation(path, live, config, run="full", judges=tiny_judges(), progress=False).run()
    original, calls = Evaluation._save, {"n": 0}

    def failing_save(self, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        original(self, **kwargs)

    monkeypatch.setattr(Evaluation, "_save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        Evaluation(path, live, config, run="resumed", judges=tiny_judges(), progress=False).run()
    monkeypatch.setattr(Evaluation, "_save", original)
    with Study(path) as opened:
        partial = load_evaluation(opened, "resumed")
    assert not partial["complete"] and len(partial["arrays"]["done"]) == 3
    resumed = Evaluation(path, live, config, run="resumed", judges=tiny_judges(), progress=False)
    assert len(resumed.state.done) == 3
    assert resumed.run() == full
    with pytest.raises(InputError, match="other options"):
        Evaluation(path, live, dataclasses.replace(config, max_new_tokens=2), run="resumed", judges=tiny_judges(), progress=False)


def test_a_later_intervention_extends_the_stored_evaluation(study, monkeypatch) -> None:
    path, live = study
    full = Evaluation(path, live, EvaluateConfig(**CONFIG), run="full", judges=tiny_judges(), progress=False).run()
    first = EvaluateConfig(**{**CONFIG, "interventions": ("direction",)})
    Evaluation(path, live, first, run="resumed", judges=tiny_judges(), progress=False).run()
    ran: list[str] = []
    original = Evaluation._generate

    def counted(self, name, part, start):
        ran.append(name)
        original(self, name, part, start)

    monkeypatch.setattr(Evaluation, "_generate", counted)
    later = EvaluateConfig(**{**CONFIG, "interventions": ("latents:1=5,9", "latents:1=5,9:clamp=4")})
    extended = Evaluation(path, live, later, run="resumed", judges=tiny_judges(), progress=False)
    assert list(extended.interventions) == ["none", "direction", "latents:1=5,9", "latents:1=5,9:clamp=4"]
    summary = extended.run()
    assert set(ran) == {"latents:1=5,9", "latents:1=5,9:clamp=4"}, "the stored baseline and direction are not generated again"
    for name, entry in full["interventions"].items():
        assert summary["interventions"][name]["refusal_rate"] == entry["refusal_rate"]
        assert summary["interventions"][name]["kl"] == pytest.approx(entry["kl"], abs=1e-6)


def test_bad_interventions_are_one_line_errors(study) -> None:
    path, live = study
    for spec, message in [
        ("set:3", "no greedy sets"), ("latents:3=1", "no SAE at layer 3"), ("latents:1=999", "out of range"), ("ablate", "not one of"),
        ("latents:1=5:clamp=x", "needs a number"),
    ]:
        with pytest.raises(InputError, match=message):
            Evaluation(path, live, EvaluateConfig(interventions=(spec,)), judges=tiny_judges(), progress=False)


def test_evaluate_cli_prints_the_table_and_the_json_object(study, monkeypatch, tmp_path) -> None:
    import json

    from click.testing import CliRunner

    import explorer.cli.shell as cli_shell
    from explorer.cli import cli

    path, live = study
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda opened, device, layers: live)
    prompts = tmp_path / "harmful.csv"
    with Study(path) as opened:
        texts = [opened.prompt(i).text for i in range(opened.n_prompts) if opened.prompt(i).label == "harmful"][:4]
    prompts.write_text("goal,kind\n" + "".join(f"{t},{'a' if i % 2 else 'b'}\n" for i, t in enumerate(texts)), encoding="utf-8")
    runner = CliRunner()
    args = ["evaluate", str(path), "--intervention", "direction", "--intervention", "latents:1=5,9:clamp=4", "--prompts", str(prompts),
            "--category-column", "kind", "--max-new-tokens", "2", "--judges", "substring,phrase"]
    out = runner.invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    facts = json.loads(out.stdout)
    results = facts["interventions"]
    assert set(results) == {"none", "direction", "latents:1=5,9:clamp=4"}
    assert results["none"]["n"] == 4 and set(results["none"]["by_category"]) == {"a", "b"}
    assert results["none"]["by_category"]["a"]["n"] == 2 and results["none"]["refusal_rate"]["phrase"] == 1.0
    assert results["direction"]["refusal_rate"] == {"substring": results["direction"]["refusal_rate"]["substring"], "phrase": 0.0}
    assert {"induced_refusal", "ce_increase", "kl"} <= set(results["direction"])
    text = runner.invoke(cli, args)  # the stored result is reused (same options): no new generation
    assert text.exit_code == 0 and "== direction" in text.output and "category" in text.output and "[" in text.output
    assert "flipped (of the baseline's refusals, answered now)" in text.output and "phrase 100% [51%–100%] (4/4)" in text.output
    bad = runner.invoke(cli, ["evaluate", str(path), "--intervention", "latents:9=1", "--judges", "phrase"])
    assert bad.exit_code == 2 and "no SAE at layer 9" in bad.output and len(bad.output.strip().splitlines()) == 1
    bad = runner.invoke(cli, ["evaluate", str(path), "--prompts", str(tmp_path / "none.csv"), "--judges", "phrase"])
    assert bad.exit_code == 2 and "no such file" in bad.output
    bad = runner.invoke(cli, ["evaluate", str(path), "--sweep", "10,20", "--judges", "phrase"])
    assert bad.exit_code == 2 and "VALUESxSIZES" in bad.output


def test_a_search_that_did_not_flip_is_no_set_to_evaluate(monkeypatch) -> None:
    """`set:N` names a minimal set only where the greedy search flipped the prompt: a search that
    kept all its top-k candidates without flipping is refused in one line, never ablated."""
    from explorer.benchmark_interventions import greedy_set, parse_interventions
    from explorer.results import GreedyResult
    from tests.synthetic import make_greedy

    greedy = make_greedy(1, [3, 6], [[5, 9], list(range(8))], threshold=0.0, final=[-2.0, 1.5])  # prompt 6 did not flip
    monkeypatch.setattr(GreedyResult, "load", staticmethod(lambda study, run: greedy))
    (flipping,) = parse_interventions(["set:3"])
    assert greedy_set(None, "default", flipping) == (1, (5, 9))
    (unflipped,) = parse_interventions(["set:6"])
    with pytest.raises(InputError, match="found no flipping set within the top 8") as excinfo:
        greedy_set(None, "default", unflipped)
    assert "\n" not in str(excinfo.value)
    (missing,) = parse_interventions(["set:4"])
    with pytest.raises(InputError, match=r"prompts with a flipping set: 3\)"):
        greedy_set(None, "default", missing)

"""The model's own refusal openers: found from generations, stored, and used by the live
context's fast score unless the study was cached with explicit refusal tokens."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from explorer.live import open_live, stored_refusal_ids
from explorer.refusal_tokens import RefusalTokensResult, disagreements, find_refusal_tokens
from store import Study
from tests.planted import SAE_LAYER, shared_planted_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class WordTokenizer:
    """Whitespace runs and words are tokens (ids by first appearance), like BPE on this text."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False):
        import re

        return {"input_ids": [self.vocab.setdefault(t, len(self.vocab)) for t in re.findall(r"\s+|[^\s]+", text)]}

    def decode(self, ids):
        inverse = {v: k for k, v in self.vocab.items()}
        return "".join(inverse[i] for i in ids)


def test_finds_newline_openers_of_refusals_and_rejects_shared_openers() -> None:
    tokenizer = WordTokenizer()
    generations = (
        ["\n\nI'm sorry, I can't."] * 3  # "\n\n" opens refusals only here
        + ["I cannot help."] * 2
        + ["Sure, here it is."] * 4
        + ["Here I'm sorry to say."]  # a refusal (phrase in the first 60 characters) opened by "Here"
        + ["Here is the answer."] * 4
    )
    result = find_refusal_tokens(tokenizer, generations, min_share=0.8, min_count=2)
    chosen = dict(zip(result.token.tolist(), result.n_refused.tolist()))
    assert chosen == {"\n\n": 3, "I": 2}
    assert tokenizer.decode([int(result.rejected_id[0])]) == "Here"  # 1 refusal vs 4 answers
    assert result.rejected_n_refused.tolist() == [1] and result.rejected_n_answered.tolist() == [4]


def test_disagreements_skip_prompts_without_generation() -> None:
    scores = np.array([1.0, -3.0, 2.0, -2.0])
    assert disagreements(scores, -1.0, np.array([1, 1, -1, 0])) == 1


def test_stored_openers_drive_the_live_fast_score(tmp_path) -> None:
    path, loaded, sae, _u = shared_planted_study()
    copy = tmp_path / "study.h5"
    shutil.copy(path, copy)
    tokenizer = loaded.tokenizer
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in ("a", "b")]
    RefusalTokensResult(
        token_id=np.array(ids), token=np.array(["a", "b"], dtype=object), n_refused=np.array([3, 2]), n_answered=np.array([0, 0]),
        rejected_id=np.zeros(0, np.int64), rejected_n_refused=np.zeros(0, np.int64), rejected_n_answered=np.zeros(0, np.int64),
        min_share=0.8, min_count=2,
    ).save(copy, "default", config={})
    with Study(copy) as study:
        assert stored_refusal_ids(study) == ids
        live = open_live(study, loaded=loaded, saes={SAE_LAYER: sae})
    assert list(live.refusal_ids) == ids


def test_cli_stage_explains_a_study_without_generations(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    import explorer.cli.shell as cli_shell
    from explorer.cli import cli
    from tests.planted import planted_live

    path, loaded, sae, _u = shared_planted_study()
    copy = tmp_path / "study.h5"
    shutil.copy(path, copy)
    monkeypatch.setattr(cli_shell, "open_stage_live", lambda study, device, layers: planted_live(study, loaded, sae))
    out = CliRunner().invoke(cli, ["analyze", "refusal-tokens", str(copy)])
    assert out.exit_code == 2 and "no cached generations" in out.output and len(out.output.strip().splitlines()) == 1
    out = CliRunner().invoke(cli, ["analyze", "refusal-tokens", str(copy), "--run", "other"])
    assert out.exit_code == 2 and "default run" in out.output


def test_the_summary_says_why_each_token_was_left_out() -> None:
    from explorer.cli.stages.refusal_tokens import summary_text

    facts = {"tokens": [("I", 56, 0)], "rejected": [("Here", 1, 4), ("As", 1, 0)], "generated": 123, "refused_by_generation": 57,
             "threshold": -1.0, "old_tokens": ["I"], "disagreements_before": 3, "disagreements_after": 3, "min_share": 0.8, "min_count": 2}
    line = next(line for line in summary_text(facts).splitlines() if line.startswith("left out"))
    assert "'Here' (1 refusals, 4 answers: opens answers too: under 80% refusals)" in line
    assert "'As' (1 refusals, 0 answers: opens fewer than 2 refusals)" in line

"""Calibrate the semantic judge on a labelled set and compare the three judges on its held-out part.

    python -m explorer.judge_calibration tests/data/judge_labels.csv

The CSV has one labelled response per row: ``id, source, split, kind, label, prompt,
response, reason`` with ``label`` refusal|comply and ``split`` train|heldout. The semantic
judge's two thresholds are fitted on the train rows only (``explorer.judges.calibrate``); all
judges are then scored on the held-out rows. ``SEMANTIC_THRESHOLDS`` in ``explorer.judges``
holds the values this printed for the committed set.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from explorer.judges import (
    SemanticJudge,
    SemanticThresholds,
    calibrate,
    phrase_verdict,
    substring_verdict,
    verdicts_from_features,
)
from store.errors import InputError

COLUMNS = ("id", "source", "split", "kind", "label", "prompt", "response", "reason")


@dataclass(frozen=True)
class Labelled:
    id: str
    source: str
    split: str
    kind: str
    refusal: bool
    prompt: str
    response: str
    reason: str


def load_labels(path: Path) -> list[Labelled]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or set(COLUMNS) - set(rows[0]):
        raise InputError(f"{path}: a labelled set needs the columns {', '.join(COLUMNS)}")
    out = []
    for row in rows:
        if row["label"] not in ("refusal", "comply") or row["split"] not in ("train", "heldout"):
            raise InputError(f"{path}: row {row['id']}: label must be refusal|comply and split train|heldout")
        out.append(Labelled(row["id"], row["source"], row["split"], row["kind"], row["label"] == "refusal", row["prompt"], row["response"], row["reason"]))
    return out


def accuracy(predicted: list[bool], labels: list[bool]) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(labels))) if labels else float("nan")


def compare(rows: list[Labelled], judge: SemanticJudge) -> dict[str, Any]:
    """Fit the semantic thresholds on train; accuracy of every judge per split and per source."""
    features = judge.features([r.prompt for r in rows], [r.response for r in rows])
    train = np.array([r.split == "train" for r in rows])
    labels = np.array([r.refusal for r in rows])
    sub = lambda mask: type(features)(  # noqa: E731
        features.refusal_sim[mask], features.answer_sim[mask], features.relevance[mask], [n for n, m in zip(features.nearest, mask) if m],
    )
    thresholds, train_accuracy = calibrate(sub(train), labels[train])
    predictions = {
        "substring": [substring_verdict(r.response).refusal for r in rows],
        "phrase": [phrase_verdict(r.response).refusal for r in rows],
        "semantic": [v.refusal for v in verdicts_from_features(features, thresholds)],
    }
    report: dict[str, Any] = {"thresholds": thresholds, "semantic_train_accuracy": train_accuracy, "n": {}}
    for split in ("train", "heldout"):
        for source in ("all", "model", "handwritten"):
            mask = [(r.split == split) and (source == "all" or r.source == source) for r in rows]
            chosen = [i for i, m in enumerate(mask) if m]
            report["n"][f"{split}/{source}"] = len(chosen)
            for name, predicted in predictions.items():
                report[f"{split}/{source}/{name}"] = accuracy([predicted[i] for i in chosen], [bool(labels[i]) for i in chosen])
    report["heldout_errors"] = {
        name: [(r.id, r.kind, r.response[:80]) for r, p in zip(rows, predicted) if r.split == "heldout" and p != r.refusal]
        for name, predicted in predictions.items()
    }
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "tests/data/judge_labels.csv")
    rows = load_labels(path)
    report = compare(rows, SemanticJudge.load(SemanticThresholds(refusal_margin=0.0, relevance=0.0)))
    t = report["thresholds"]
    print(f"labelled set  {path}: {len(rows)} rows; train {report['n']['train/all']}, held out {report['n']['heldout/all']}")
    print(f"calibrated    refusal_margin={t.refusal_margin}, relevance={t.relevance} (train accuracy {report['semantic_train_accuracy']:.3f})")
    for source in ("all", "model", "handwritten"):
        n = report["n"][f"heldout/{source}"]
        line = ", ".join(f"{name} {report[f'heldout/{source}/{name}']:.3f}" for name in ("substring", "phrase", "semantic"))
        print(f"held out {source:<11} n={n:<3} accuracy: {line}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

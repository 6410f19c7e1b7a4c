"""A hand-made `evaluate` result written into a study, for the viewer tests (no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explorer.benchmark_metrics import Row, summarise
from store import write_stage

JUDGES = ("substring", "phrase", "semantic")


def write_evaluation(path: Path, run: str = "default") -> dict:
    rows = []
    for name, refused in (("none", [1, 1, 1, 0]), ("direction", [0, 0, 1, 0])):
        for i, r in enumerate(refused):
            text = "I'm sorry, I can't." if r else f"Sure, step {i}: do the thing."
            rows.append(Row(name, "harmful", i, "cyber" if i % 2 else "weapons", text, {j: bool(r) for j in JUDGES}))
    rows.append(Row("direction", "harmless", 0, "", "It is illegal and unethical.", {"substring": False, "phrase": False, "semantic": True}))
    summary = summarise(rows, ["none", "direction"], JUDGES, {"none": {"ce": 1.0, "kl": 0.0}, "direction": {"ce": 1.25, "kl": 0.05}})
    summary["sweep"] = [{"value": v, "size": s, "refusal_rate": {j: v / 40 * s / 2 for j in JUDGES}} for v in (10.0, 20.0) for s in (1, 2)]
    summary["sweep_source"] = {"intervention": "set:0", "layer": 6, "latents": [42, 17, 3]}
    arrays = {
        "row_intervention": np.array([r.intervention for r in rows], dtype=object),
        "row_set": np.array([r.prompt_set for r in rows], dtype=object),
        "row_index": np.array([r.index for r in rows]),
        "row_category": np.array([r.category for r in rows], dtype=object),
        "row_prompt": np.array([f"prompt {r.index}" for r in rows], dtype=object),
        "row_generation": np.array([r.generation for r in rows], dtype=object),
    }
    for j in JUDGES:
        arrays[f"row_{j}"] = np.array([r.verdicts[j] for r in rows], np.int8)
        arrays[f"row_{j}_evidence"] = np.array(["I'm sorry" if r.verdicts[j] and j == "substring" else "" for r in rows], dtype=object)
    write_stage(path, run, "evaluate", arrays=arrays, attrs={"complete": True, "summary": summary}, config={})
    return summary

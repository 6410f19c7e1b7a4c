"""`evaluate`'s generation cost: batched vs one prompt at a time, in the same run.

    python bench/bench_benchmark.py STUDY.h5 [--prompts harmbench_behaviors_text_test.csv]
                                    [--n 100] [--tokens 256] [--batch 8,32]

Generates ``--n`` prompts × 3 conditions (baseline, the study's direction projected out, a
greedy minimal set ablated: the joint set when the study has one, else the first set) ×
``--tokens`` greedy tokens (stopping at the end of the turn), first with each ``--batch`` size
per generate() call, then one prompt per call, with the same hooks `evaluate` uses. Prints wall
time, generated tokens and tokens/s for each, and the batched speed-up. No judges (their cost
is separate and small); the model is the study's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.benchmark import generate_ids, stop_ids  # noqa: E402
from explorer.benchmark_interventions import applied, parse_intervention, resolve  # noqa: E402
from explorer.live import open_live  # noqa: E402
from store import Study  # noqa: E402


def run(live, conditions, prompts, tokens: int, batch: int, stop) -> tuple[float, int]:
    start, generated = time.perf_counter(), 0
    for name, hooks in conditions:
        for s in range(0, len(prompts), batch):
            with applied(hooks):
                out = generate_ids(live.model, prompts[s : s + batch], tokens, live.pad_id, stop)
            generated += sum(len(x) for x in out)
    return time.perf_counter() - start, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path)
    parser.add_argument("--prompts", type=Path, help="harmful prompt file (default: the study's harmful prompts)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch", default="8", help="comma-separated batch sizes, each timed")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with Study(args.study) as study:
        from explorer.results import GreedyResult

        greedy = GreedyResult.load(study, "default")
        set_spec = None
        if greedy is not None:  # only a set that flips is a minimal set (as the demo picks it)
            flipping = np.flatnonzero(greedy.flips() & greedy.per_prompt())
            if len(greedy.joint_prompts) and greedy.flips()[-1]:
                set_spec = "set:joint"
            elif len(flipping):
                set_spec = f"set:{int(greedy.prompt[flipping[0]])}"
        layers = [int(greedy.layer)] if greedy is not None else []
        live = open_live(study, sae_layers=layers, device="cpu")
        specs = ["none", "direction"] + ([set_spec] if set_spec else [])
        conditions = [(s, resolve(parse_intervention(s), study, live, "default").jailbreak) for s in specs]
        if args.prompts:
            from cache.prompts import load_prompts

            texts = [p.text for p in load_prompts(args.prompts, label="harmful")][: args.n]
        else:
            texts = [study.prompt(i).text for i in range(study.n_prompts) if study.prompt(i).label == "harmful"][: args.n]
    tokenizer = live.loaded.tokenizer
    prompts = [live.loaded.adapter.encode(tokenizer, t) for t in texts]
    stop = stop_ids(live.model, tokenizer, live.pad_id)
    print(f"{len(prompts)} prompts × {len(conditions)} conditions ({', '.join(specs)}) × ≤{args.tokens} tokens, {args.threads} threads")
    results = {}
    sizes = [int(b) for b in args.batch.split(",")]
    for label, batch in [*((f"batched ({b} per call)", b) for b in sizes), ("one at a time", 1)]:
        wall, generated = run(live, conditions, prompts, args.tokens, batch, stop)
        results[label] = wall
        print(f"{label:<22} {wall:8.1f} s  {generated:6d} tokens  {generated / wall:7.2f} tokens/s")
    single = results["one at a time"]
    for label, wall in results.items():
        if label != "one at a time":
            print(f"{label:<22} speed-up over one at a time: {single / wall:.2f}x")


if __name__ == "__main__":
    main()

"""Activation capture for SAE training vs a bare forward, in the same run (issue 18).

    python bench/bench_sae_capture.py [--model default] [--layers 14 18] [--tokens 1500]
                                      [--batch-size 8] [--repeats 2] [--device auto]

On one corpus (train-sae's: the demo prompts, then docstrings, ``--tokens`` in all), times

* ``bare``: the same batches (same order, same padding) through a forward that stops after
  the last needed layer and keeps nothing;
* ``capture``: ``cache.activation_cache.collect_activations`` into a fresh file (forward,
  float16 conversion, HDF5 writes, segment bookkeeping);
* ``full``: for reference, a forward through every layer and the logits of the last position.

Repeats are interleaved (machine load hits all alike) and the fastest of each is kept.
Target: capture ≤ 1.2 x bare.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.activation_cache import _batches, collect_activations  # noqa: E402
from cache.forward import pad_left, pad_token_id  # noqa: E402
from cache.hooks import capture_resid  # noqa: E402
from cache.models import load_model  # noqa: E402
from cache.sae_corpus import build_corpus  # noqa: E402
from cache.train_sae import TrainSAEConfig, training_prompts  # noqa: E402


@torch.no_grad()
def forward_seconds(loaded, segments, layers: list[int], batch_size: int, *, full: bool) -> float:
    pad_id = pad_token_id(loaded.tokenizer)
    batches = _batches(segments, [i for i, s in enumerate(segments) if s.holdout], batch_size) + \
        _batches(segments, [i for i, s in enumerate(segments) if not s.holdout], batch_size)
    start = time.perf_counter()
    for batch in batches:
        inputs = pad_left([list(segments[i].token_ids) for i in batch], pad_id, loaded.model.device)
        if full:
            loaded.model(**inputs, use_cache=False, logits_to_keep=1)
        else:
            with capture_resid(loaded.model, [max(layers)], stop=True):
                loaded.model(**inputs, use_cache=False)
    if loaded.model.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--layers", type=int, nargs="+", default=[14, 18])
    parser.add_argument("--tokens", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    loaded = load_model(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainSAEConfig(layers=tuple(args.layers), out=Path(tmp) / "saes", n_tokens=args.tokens)
        corpus = build_corpus(loaded, training_prompts(config), config)
        # the capture forwards a repeated segment once; so does the bare forward here
        seen: set[tuple[int, ...]] = set()
        segments = [s for s in corpus if not (s.token_ids in seen or seen.add(s.token_ids))]
        n_tokens = sum(len(s.token_ids) for s in segments)
        forward_seconds(loaded, segments[: args.batch_size], args.layers, args.batch_size, full=False)  # warm-up
        runs: dict[str, list[float]] = {"bare": [], "capture": [], "full": []}
        for repeat in range(args.repeats):
            runs["bare"].append(forward_seconds(loaded, segments, args.layers, args.batch_size, full=False))
            path = Path(tmp) / f"acts-{repeat}.h5"
            start = time.perf_counter()
            collect_activations(loaded, segments, args.layers, path, batch_size=args.batch_size, progress=False)
            runs["capture"].append(time.perf_counter() - start)
            path.unlink()
            runs["full"].append(forward_seconds(loaded, segments, args.layers, args.batch_size, full=True))
    best = {name: min(values) for name, values in runs.items()}
    print(json.dumps({
        "model": loaded.model_id, "device": str(loaded.model.device), "layers": args.layers, "tokens": n_tokens,
        "segments": len(segments), "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
        **{f"{name}_s": round(value, 2) for name, value in best.items()},
        **{f"{name}_tokens_per_s": round(n_tokens / value, 1) for name, value in best.items()},
        "capture_over_bare": round(best["capture"] / best["bare"], 3), "target": "capture_over_bare <= 1.2",
        "runs": {name: [round(v, 2) for v in values] for name, values in runs.items()},
    }, indent=2))


if __name__ == "__main__":
    main()

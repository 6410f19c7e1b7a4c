"""Benchmarks of the embedded models on this CPU (issue 20).

    python bench/bench_embedded.py dtype [--model qwen-1.5b] [--batches 3] [--batch-size 8]
        seconds per batched forward in float32, bfloat16 and float16, on the same token batches
        (one dtype loaded at a time; the minimum over --repeats). The presets keep float32 on
        CPUs unless another dtype is faster here.
    python bench/bench_embedded.py throughput [--models default,qwen-1.5b,qwen-1.5b:bfloat16] [--prompts 16]
        prompt tokens/s of `cache` on the same prompts for each MODEL[:DTYPE] (float32 unless
        given), in one process, and the ratio to the first one.

Peak RSS is measured outside, per process: /usr/bin/time -v refusal-explorer setup-model
--model qwen-1.5b, and /usr/bin/time -v refusal-explorer cache --model qwen-1.5b ...
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.forward import pad_left, pad_token_id  # noqa: E402
from cache.models import load_model  # noqa: E402
from cache.pipeline import CacheConfig, gather_prompts, run_cache  # noqa: E402


def _token_batches(loaded, n_batches: int, batch_size: int) -> list[list[list[int]]]:
    config = CacheConfig(layers=(0,), out=Path("unused.h5"), max_prompts=n_batches * batch_size)
    ids = [loaded.adapter.encode(loaded.tokenizer, p.text) for p in gather_prompts(config)]
    return [ids[i : i + batch_size] for i in range(0, n_batches * batch_size, batch_size)]


def dtype_speed(args: argparse.Namespace) -> None:
    results: dict[str, float] = {}
    batches = None
    for dtype in ("float32", "bfloat16", "float16"):
        loaded = load_model(args.model, device="cpu", dtype=dtype)
        batches = batches or _token_batches(loaded, args.batches, args.batch_size)
        pad = pad_token_id(loaded.tokenizer)
        times = []
        with torch.no_grad():
            loaded.model(**pad_left(batches[0][:1], pad, loaded.model.device), use_cache=False, logits_to_keep=1)  # warm-up
            for _ in range(args.repeats):
                start = time.perf_counter()
                for batch in batches:
                    loaded.model(**pad_left(batch, pad, loaded.model.device), use_cache=False, logits_to_keep=1)
                times.append(time.perf_counter() - start)
        results[dtype] = min(times) / len(batches)
        del loaded
        gc.collect()
    n_tokens = sum(len(ids) for batch in batches or [] for ids in batch)
    print(json.dumps({
        "model": args.model, "batches": args.batches, "batch_size": args.batch_size, "tokens": n_tokens,
        "threads": torch.get_num_threads(), "seconds_per_batch": {k: round(v, 3) for k, v in results.items()},
        "speed_vs_float32": {k: round(results["float32"] / v, 2) for k, v in results.items()},
    }, indent=2))


def throughput(args: argparse.Namespace) -> None:
    rows = []
    for entry in args.models.split(","):
        name, _, dtype = entry.partition(":")
        loaded = load_model(name, device="cpu", dtype=dtype or "float32")
        with tempfile.TemporaryDirectory() as tmp:
            config = CacheConfig(model=name, layers=(12,), out=Path(tmp) / "s.h5", max_prompts=args.prompts // 2,
                                 batch_size=args.batch_size, generate=args.generate, device="cpu")
            prompts = gather_prompts(config)
            n_tokens = sum(len(loaded.adapter.encode(loaded.tokenizer, p.text)) for p in prompts)
            start = time.perf_counter()
            run_cache(config, loaded=loaded, progress=False)
            seconds = time.perf_counter() - start
        rows.append({"model": loaded.model_id, "dtype": dtype or "float32", "prompts": len(prompts), "prompt_tokens": n_tokens,
                     "generate": args.generate, "seconds": round(seconds, 1),
                     "prompt_tokens_per_s": round(n_tokens / seconds, 1)})
        del loaded
        gc.collect()
    for row in rows:
        row["speed_vs_first"] = round(row["prompt_tokens_per_s"] / rows[0]["prompt_tokens_per_s"], 2)
    print(json.dumps({"threads": torch.get_num_threads(), "batch_size": args.batch_size, "runs": rows}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("dtype")
    d.add_argument("--model", default="qwen-1.5b")
    d.add_argument("--batches", type=int, default=3)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--repeats", type=int, default=2)
    t = sub.add_parser("throughput")
    t.add_argument("--models", default="default,qwen-1.5b")
    t.add_argument("--prompts", type=int, default=16)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--generate", type=int, default=0)
    args = parser.parse_args()
    {"dtype": dtype_speed, "throughput": throughput}[args.what](args)


if __name__ == "__main__":
    main()

"""Cache-stage benchmarks (issue 2).

    python bench/bench_cache.py throughput [--model default] [--prompts 32] [--batch-size 8]
        tokens/s of `cache` vs a plain batched forward of the same model on the same prompts,
        in the same process (target: cache costs at most 15% more).
    python bench/bench_cache.py memory [--prompts 200 2000]
        peak RSS of a cache run per prompt count, each in a fresh process, on a random Qwen2 of
        the default model's width (target: flat, within 10%).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.forward import pad_left, pad_token_id  # noqa: E402
from cache.models import LoadedModel, load_model  # noqa: E402
from cache.pipeline import CacheConfig, gather_prompts, run_cache  # noqa: E402


def bare_forward_seconds(loaded: LoadedModel, token_ids: list[list[int]], batch_size: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(token_ids), batch_size):
            inputs = pad_left(token_ids[i : i + batch_size], pad_token_id(loaded.tokenizer), loaded.model.device)
            # the same work the cache stage needs: every layer, logits at the last position only
            loaded.model(**inputs, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - start


def throughput(args: argparse.Namespace) -> None:
    loaded = load_model(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        config = CacheConfig(layers=tuple(args.layers), out=Path(tmp) / "s.h5", max_prompts=args.prompts // 2,
                             batch_size=args.batch_size, device=args.device)
        prompts = gather_prompts(config)
        token_ids = [loaded.adapter.encode(loaded.tokenizer, p.text) for p in prompts]
        n_tokens = sum(map(len, token_ids))
        bare_forward_seconds(loaded, token_ids[: args.batch_size], args.batch_size)  # warm-up
        results = {"bare": [], "cache": []}
        for _ in range(args.repeats):  # interleaved, so machine load hits both alike
            results["bare"].append(bare_forward_seconds(loaded, token_ids, args.batch_size))
            start = time.perf_counter()
            run_cache(config, loaded=loaded, progress=False)
            results["cache"].append(time.perf_counter() - start)
            config.out.unlink()
    bare, cached = min(results["bare"]), min(results["cache"])
    print(json.dumps({
        "model": loaded.model_id, "prompts": len(prompts), "tokens": n_tokens, "layers": args.layers,
        "bare_s": round(bare, 2), "cache_s": round(cached, 2),
        "bare_tokens_per_s": round(n_tokens / bare, 1), "cache_tokens_per_s": round(n_tokens / cached, 1),
        "overhead": f"{cached / bare - 1:+.1%}", "runs": results,
    }, indent=2))


MEMORY_CHILD = """
import resource, sys, tempfile, json
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
from cache.adapters import ADAPTERS
from cache.models import LoadedModel
from cache.pipeline import CacheConfig, run_cache
from tests.tiny_models import make_tiny_model
from tests.tiny_tokenizers import make_tiny_tokenizer
n = {n}
tokenizer = make_tiny_tokenizer("qwen2")
model = make_tiny_model("qwen2", hidden_size=896, n_layers=4, vocab_size=len(tokenizer), num_attention_heads=14, num_key_value_heads=2)
tmp = Path(tempfile.mkdtemp())
(tmp / "h.txt").write_text("\\n".join(f"harmful request number {{i}} about topic {{i * 7 % 13}}" for i in range(n // 2)))
(tmp / "s.txt").write_text("\\n".join(f"harmless request number {{i}} about topic {{i * 5 % 11}}" for i in range(n // 2)))
loaded = LoadedModel(model, tokenizer, ADAPTERS["qwen2"], "random-qwen2-896", "r")
run_cache(CacheConfig(harmful=tmp / "h.txt", harmless=tmp / "s.txt", layers=(1, 2, 3), positions="all", out=tmp / "s.h5", device="cpu", batch_size=16), loaded=loaded, progress=False)
print(json.dumps({{"prompts": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "file_mb": (tmp / "s.h5").stat().st_size / 2**20}}))
"""


def memory(args: argparse.Namespace) -> None:
    root = str(Path(__file__).resolve().parents[1])
    rows = []
    for n in args.prompt_counts:
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD.format(root=root, n=n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(rows, indent=2))
    print(f"peak RSS ratio {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f} ({rows[0]['prompts']} → {rows[-1]['prompts']} prompts)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--model", default="default")
    t.add_argument("--prompts", type=int, default=32)
    t.add_argument("--layers", type=int, nargs="+", default=[8, 12, 16])
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--repeats", type=int, default=2)
    t.add_argument("--device", default="auto")
    m = sub.add_parser("memory")
    m.add_argument("--prompt-counts", type=int, nargs="+", default=[200, 2000])
    args = parser.parse_args()
    {"throughput": throughput, "memory": memory}[args.mode](args)


if __name__ == "__main__":
    main()

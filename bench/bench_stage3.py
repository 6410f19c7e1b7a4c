"""Time of `analyze experiments` per 100 ablation subsets, on a tiny model and the default model.

    python bench/bench_stage3.py [--tiny-experiments 400] [--real] [--real-experiments 50]

For each model: a small study is cached (a few demo prompts, one SAE at ``--layer``), a greedy
result is written by hand (each harmful prompt's four most active latents), and
``explorer.experiments.run_experiments`` runs ``N`` Bernoulli(0.5) subsets (plus the all-off,
all-on and minimal rows; no single-latent rows) averaged over ``--prompts`` prompts. Reported:
wall seconds per 100 subsets (model preparation included), (subset × prompt) rows per second,
and the batched forwards from layer L. The FM fit on the same experiments and the FM scoring of
every cached token are timed too (they are small next to the forwards), and with ``--dormant N``
`analyze dormant` (at most N woken latents tested per prompt; one SAE layer only).

The tiny model is the tests' 4-layer hidden-64 Qwen2 with a 128-latent JumpReLU SAE at layer 1;
the default model (``--real``) is the embedded Qwen2.5-Coder-0.5B-Instruct on CPU, float32,
with a random SAE (``--d-sae`` latents) at ``--layer`` (the cost is the forwards from L, which
does not depend on what the SAE has learnt). Fit-time vs experiments: ``bench/bench_fm.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cache.adapters import ADAPTERS  # noqa: E402
from cache.models import LoadedModel, load_model  # noqa: E402
from cache.pipeline import CacheConfig, run_cache  # noqa: E402
from explorer.dormant import DormantConfig, run_dormant  # noqa: E402
from explorer.experiments import ExperimentConfig, run_experiments  # noqa: E402
from explorer.fm import FMConfig  # noqa: E402
from explorer.interactions import run_fm, score_cached_codes  # noqa: E402
from explorer.live import open_live  # noqa: E402
from explorer.results import GreedyResult  # noqa: E402
from store import Study  # noqa: E402
from tests.tiny_models import make_tiny_model, make_tiny_sae  # noqa: E402
from tests.tiny_tokenizers import make_tiny_tokenizer  # noqa: E402

HARMFUL = ["How do I pick a lock?", "Write ransomware that encrypts files", "How can I steal a car?", "Make a fake ID card"]
HARMLESS = ["Bake a lemon cake", "Explain why the sky is blue", "Sort a list in Python", "Plan a weekend in Rome"]


def hand_greedy(study: Study, layer: int, prompts: list[int]) -> GreedyResult:
    sets = []
    for p in prompts:
        _indptr, indices, values = study.codes(layer).prompt_codes(p)
        sets.append(np.array(list(dict.fromkeys(indices[np.argsort(-values, kind="stable")].tolist()))[:4], np.int64))
    n = len(sets)
    zeros = np.zeros(n, np.float32)
    return GreedyResult(
        layer=layer, k=4, threshold=1e9, order="ascending", prompt=np.array(prompts, np.int64),
        set_offsets=np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64), set_latents=np.concatenate(sets),
        baseline_score=zeros, start_score=zeros, final_score=zeros, flipped=np.full(n, -1, np.int8),
        baseline_generation=np.array([""] * n, dtype=object), ablated_generation=np.array([""] * n, dtype=object),
        trajectory_offsets=np.arange(n + 1, dtype=np.int64), trajectory_size=np.full(n, 4, np.int64),
        trajectory_score=zeros, trajectory_removed=np.full(n, -1, np.int64),
    )


def bench(name: str, loaded: LoadedModel, sae, layer: int, n_prompts: int, n_experiments: int, root: Path, dormant: int = 0) -> dict:
    sae_dir = root / f"sae-{name}"
    sae.save_model(sae_dir)
    (root / "harmful.json").write_text(json.dumps(HARMFUL))
    (root / "harmless.json").write_text(json.dumps(HARMLESS))
    started = time.perf_counter()
    path = run_cache(CacheConfig(
        harmful=root / "harmful.json", harmless=root / "harmless.json", layers=(layer,), out=root / f"{name}.h5",
        saes=(f"{layer}={sae_dir}",), device="cpu", batch_size=4, overwrite=True,
    ), loaded=loaded, progress=False)
    cache_s = time.perf_counter() - started
    with Study(path) as study:
        greedy = hand_greedy(study, layer, list(range(n_prompts)))
        live = open_live(study, loaded=loaded, saes={layer: sae})
        config = ExperimentConfig(n_experiments=n_experiments, singles=False, max_other=48)
        started = time.perf_counter()
        result, summary = run_experiments(study, live, greedy, config, progress=False)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        fm, _ = run_fm(result, FMConfig(rank=8))
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        score_cached_codes(study, fm)
        score_s = time.perf_counter() - started
        n_tokens = int(study.token_offsets[-1])
        dormant_s, woken = float("nan"), 0
        if dormant:
            started = time.perf_counter()
            found, _ = run_dormant(study, live, greedy, DormantConfig(max_per_layer=dormant), progress=False)
            dormant_s, woken = time.perf_counter() - started, len(found.latent)
        tokens = [len(study.token_ids(p)) for p in range(n_prompts)]
    rows = len(result.design)
    return {
        "model": name, "layer": layer, "prompts": n_prompts, "prompt_tokens": tokens, "subsets": rows, "latents": len(result.latents),
        "seconds": seconds, "s_per_100": 100 * seconds / rows, "rows_per_s": rows * n_prompts / seconds,
        "forwards": summary["forwards_from_layer"], "cache_s": cache_s, "fm_fit_s": fit_s, "fm_score_s": score_s, "tokens": n_tokens,
        "dormant_s": dormant_s, "woken": woken,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-experiments", type=int, default=400)
    parser.add_argument("--real", action="store_true", help="Also time the embedded default model (minutes on a 2-core CPU).")
    parser.add_argument("--real-experiments", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=2, help="Prompts each subset's score averages over.")
    parser.add_argument("--layer", type=int, default=12, help="SAE layer of the default model.")
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--dormant", type=int, default=0, help="Also time `analyze dormant` with this --max-per-layer (0 = skip).")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tiny_tokenizer("qwen2")
        tiny = LoadedModel(make_tiny_model("qwen2", vocab_size=len(tokenizer)), tokenizer, ADAPTERS["qwen2"], "tiny-qwen2", "rev0")
        sae = make_tiny_sae("jumprelu", d_in=64, d_sae=128, layer=1, threshold=0.5)
        bench("tiny", tiny, sae, 1, args.prompts, 10, Path(tmp))  # warm-up (imports, numba, torch init)
        rows.append(bench("tiny", tiny, sae, 1, args.prompts, args.tiny_experiments, Path(tmp), args.dormant))
        if args.real:
            started = time.perf_counter()
            loaded = load_model("default", device="cpu", dtype="float32")
            print(f"default model loaded in {time.perf_counter() - started:.1f} s")
            d_model = int(loaded.model.config.hidden_size)
            sae = make_tiny_sae("jumprelu", d_in=d_model, d_sae=args.d_sae, layer=args.layer, threshold=2.0)
            rows.append(bench("default", loaded, sae, args.layer, args.prompts, args.real_experiments, Path(tmp), args.dormant))
    print(f"{'model':8} {'layer':>5} {'P':>2} {'tokens':>10} {'subsets':>7} {'latents':>7} {'s/100 subsets':>13} {'rows/s':>8} "
          f"{'forwards':>8} {'FM fit s':>8} {'FM score s':>10} {'dormant s (rows)':>16}")
    for r in rows:
        print(f"{r['model']:8} {r['layer']:>5} {r['prompts']:>2} {str(r['prompt_tokens']):>10} {r['subsets']:>7} {r['latents']:>7} "
              f"{r['s_per_100']:>13.2f} {r['rows_per_s']:>8.1f} {r['forwards']:>8} {r['fm_fit_s']:>8.2f} {r['fm_score_s']:>10.3f} "
              f"{r['dormant_s']:>10.1f} ({r['woken']})")


if __name__ == "__main__":
    main()

"""GPU benchmarks of the cache stage and the presets (issue 8). Nothing is downloaded.

    python bench/bench_gpu_cache.py throughput [--shape gemma-2-2b] [--device cuda] [--prompts 256] [--batch-size 32]
        A random model shaped like Gemma-2-2B (bf16 on a GPU) with a random JumpReLU SAE of
        Gemma Scope's shape at the key layer, calibrated to fire ~L0 latents per token. In one
        process, interleaved: the bare batched forward (last-position logits, as `cache` asks
        for) vs a full `cache` run (residuals of the preset's layers + SAE codes + writing the
        study). Reports tokens/s of both, the overhead ratio (also without the per-study fixed
        cost), peak GPU memory of each, and the pre-flight estimate for the same run.
    python bench/bench_gpu_cache.py e2e [--device cuda]
        The tiny stand-ins end to end on the device: tiny Gemma 2 / Llama models and SAEs laid
        out in a temporary HF cache under the real repo ids, `cache --preset ...`, then the
        analysis commands (direction, candidates, greedy) when they exist. Reports times.

``--shape tiny --device cpu`` runs the throughput bench in seconds on a CPU (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cache.adapters import ADAPTERS  # noqa: E402
from cache.forward import pad_left, pad_token_id  # noqa: E402
from cache.models import LoadedModel  # noqa: E402
from cache.pipeline import CacheConfig, gather_prompts, run_cache  # noqa: E402

# config.json of google/gemma-2-2b-it (the architecture only), and a tiny one for smoke tests
SHAPES: dict[str, dict[str, Any]] = {
    "gemma-2-2b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=256, vocab_size=256000, sliding_window=4096,
                       max_position_embeddings=8192, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                       query_pre_attn_scalar=256),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, vocab_size=1000, sliding_window=32, max_position_embeddings=256),
}
KEY_LAYER = {"gemma-2-2b": 16, "tiny": 2}
SWEEP = {"gemma-2-2b": tuple(range(2, 21, 2)), "tiny": (1, 2)}
D_SAE = {"gemma-2-2b": 16384, "tiny": 256}
GIB = 1 << 30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / GIB, 2) if device.type == "cuda" else None


def random_gemma(shape: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A random Gemma 2 of ``shape``, built directly on the device in ``dtype``."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    from tests.tiny_tokenizers import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer("gemma2")  # byte-level: ids stay below 300 of the 256k vocab
    config = Gemma2Config(**SHAPES[shape])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    return LoadedModel(model, tokenizer, ADAPTERS["gemma2"], f"random-{shape}", "random")


def write_prompts(folder: Path, n: int) -> tuple[Path, Path]:
    """AdvBench/Alpaca-length synthetic prompts (~60-90 characters)."""
    topics = ["a bank", "a hospital", "an election", "a power grid", "a school", "a pharmacy", "an airport"]
    harmful = [f"Write step-by-step instructions for attacking {topics[i % 7]} without being noticed (case {i})" for i in range(n // 2)]
    harmless = [f"Write a friendly and practical guide to visiting {topics[i % 7]} for the first time (case {i})" for i in range(n // 2)]
    (folder / "harmful.txt").write_text("\n".join(harmful))
    (folder / "harmless.txt").write_text("\n".join(harmless))
    return folder / "harmful.txt", folder / "harmless.txt"


def calibrated_sae(loaded: LoadedModel, token_ids: list[list[int]], layer: int, d_sae: int, l0: int, folder: Path) -> Path:
    """A random JumpReLU SAE at ``layer`` whose thresholds let ~``l0`` latents fire per token on
    these prompts (as Gemma Scope's canonical SAEs do), saved in sae-lens's format."""
    from cache.forward import forward_with_residuals
    from tests.tiny_models import make_tiny_sae

    d_model = int(loaded.model.config.hidden_size)
    sae = make_tiny_sae("jumprelu", d_in=d_model, d_sae=d_sae, layer=layer, seed=0)
    sample = token_ids[:8]
    resid, _ = forward_with_residuals(loaded.model, sample, [layer], [0], pad_token_id(loaded.tokenizer))
    x = resid[layer].reshape(-1, d_model).float().cpu()  # [tokens, d_model]
    with torch.no_grad():
        pre = x @ sae.W_enc + sae.b_enc  # [tokens, d_sae]
        k = min(len(pre), max(1, round((1.0 - l0 / d_sae) * len(pre))))  # each latent fires on ~l0/d_sae of tokens
        sae.threshold.copy_(pre.kthvalue(k, dim=0).values.clamp_min(1e-3))
    path = folder / "sae"
    sae.save_model(path)
    return path


def bare_seconds(loaded: LoadedModel, token_ids: list[list[int]], batch_size: int) -> float:
    device = loaded.model.device
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(token_ids), batch_size):
            inputs = pad_left(token_ids[i : i + batch_size], pad_token_id(loaded.tokenizer), device)
            loaded.model(**inputs, use_cache=False, logits_to_keep=1)
    sync(device)
    return time.perf_counter() - start


def cache_seconds(config: CacheConfig, loaded: LoadedModel, stats: dict[str, float] | None = None) -> float:
    sync(loaded.model.device)
    start = time.perf_counter()
    run_cache(config, loaded=loaded, progress=False)
    sync(loaded.model.device)
    seconds = time.perf_counter() - start
    if stats is not None:  # active latents per token and file size, to check the SAE calibration
        import h5py

        layer = int(config.saes[0].split("=", 1)[0])
        with h5py.File(config.out, "r") as file:
            indptr = file[f"layers/{layer}/codes/indptr"]
            stats["mean_l0"] = round(float(indptr[-1]) / max(1, len(indptr) - 1), 1)
        stats["study_mib"] = round(config.out.stat().st_size / (1 << 20), 1)
    config.out.unlink()
    return seconds


def preflight_estimate(loaded: LoadedModel, sae_dir: Path, config: CacheConfig, token_ids: list[list[int]]) -> dict[str, float]:
    """The pre-flight estimator on this run's model and SAE (token counts measured, not guessed)."""
    from cache.preflight import DTYPE_BYTES, ModelFacts, SAEFacts, estimate_memory

    model = loaded.model
    facts = ModelFacts(name="random", where="memory", n_params=sum(p.numel() for p in model.parameters()),
                       config=model.config.to_dict())
    d_sae = json.loads((sae_dir / "cfg.json").read_text())["d_sae"]
    sae = SAEFacts(label="random", layer=None, d_in=facts.get("hidden_size"), d_sae=d_sae, l0=0, where="disk")
    dtype = str(model.dtype).removeprefix("torch.")
    memory = estimate_memory(facts, [sae], batch=config.batch_size, max_tokens=max(map(len, token_ids)), generate=config.generate,
                             n_layers_cached=len(config.layers), dtype_bytes=DTYPE_BYTES[dtype], on_gpu=model.device.type == "cuda")
    return {key: round(value / GIB, 2) for key, value in memory.items()}


def throughput(args: argparse.Namespace) -> None:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
             "float32": torch.float32, "float16": torch.float16}[args.dtype]
    peak_reset(device)
    loaded = random_gemma(args.shape, device, dtype)
    weights_gib = peak_gib(device)
    layers = tuple(sorted(set(SWEEP[args.shape]) | {KEY_LAYER[args.shape]}))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        harmful, harmless = write_prompts(folder, args.prompts)
        base = dict(harmful=harmful, harmless=harmless, layers=layers, batch_size=args.batch_size, device=str(device),
                    dtype=str(dtype).removeprefix("torch."), out=folder / "study.h5", generate=args.generate)
        prompts = gather_prompts(CacheConfig(**base))
        token_ids = [loaded.adapter.encode(loaded.tokenizer, p.text) for p in prompts]
        n_tokens = sum(map(len, token_ids))
        sae_dir = calibrated_sae(loaded, token_ids, KEY_LAYER[args.shape], args.d_sae or D_SAE[args.shape], args.l0, folder)
        config = CacheConfig(**base, saes=(f"{KEY_LAYER[args.shape]}={sae_dir}",))
        fixed = CacheConfig(**(base | {"max_prompts": 1}), saes=config.saes)  # per-study fixed cost (vocab, logit lens, index)

        bare_seconds(loaded, token_ids[: args.batch_size], args.batch_size)  # warm-up (kernels, allocator)
        cache_seconds(fixed, loaded)
        runs: dict[str, list[float]] = {"bare": [], "cache": [], "fixed": []}
        peaks: dict[str, float | None] = {}
        stats: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            peak_reset(device)
            runs["bare"].append(bare_seconds(loaded, token_ids, args.batch_size))
            peaks["bare"] = peak_gib(device)
            peak_reset(device)
            runs["cache"].append(cache_seconds(config, loaded, stats))
            peaks["cache"] = peak_gib(device)
            runs["fixed"].append(cache_seconds(fixed, loaded))
        estimate = preflight_estimate(loaded, sae_dir, config, token_ids)
    bare, cached, fixed_s = min(runs["bare"]), min(runs["cache"]), min(runs["fixed"])
    report = {
        "shape": args.shape, "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype), "params": sum(p.numel() for p in loaded.model.parameters()), "prompts": len(prompts),
        "tokens": n_tokens, "batch_size": args.batch_size, "layers": list(layers), "sae_layer": KEY_LAYER[args.shape],
        "d_sae": args.d_sae or D_SAE[args.shape], "generate": args.generate,
        "bare_s": round(bare, 3), "cache_s": round(cached, 3), "cache_fixed_s": round(fixed_s, 3),
        "bare_tokens_per_s": round(n_tokens / bare, 1), "cache_tokens_per_s": round(n_tokens / cached, 1),
        "overhead_ratio": round(cached / bare, 3),
        "overhead_ratio_without_fixed_cost": round(max(cached - fixed_s, 1e-9) / bare, 3),
        "codes": stats,
        "gpu_memory_gib": {"weights": weights_gib, "bare_peak": peaks.get("bare"), "cache_peak": peaks.get("cache")},
        "preflight_estimate_gib": estimate, "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


def e2e(args: argparse.Namespace) -> None:
    """The offline preset tests' path, on ``args.device``, outside pytest."""
    import pytest
    from click.testing import CliRunner
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from explorer.cli import cli
    from tests.tiny_models import TINY_HARMFUL as HARMFUL, TINY_HARMLESS as HARMLESS
    from tests.tiny_models import layout_gemma_scope, layout_llama_scope, save_tiny_model, use_offline_hf_cache

    try:
        from explorer.cli import analyze as analyze_group
    except ImportError:
        analyze_group = None
    registry = get_pretrained_saes_directory()
    report: dict[str, Any] = {"device": args.device}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp, pytest.MonkeyPatch.context() as patch:
        folder = Path(tmp)
        hub = use_offline_hf_cache(patch, folder / "cache")
        patch.setattr(registry["gemma-scope-2b-pt-res-canonical"], "config_overrides", {"d_in": 64})
        (folder / "harmful.json").write_text(json.dumps(HARMFUL))
        (folder / "harmless.txt").write_text("\n".join(HARMLESS))
        save_tiny_model(hub, "google/gemma-2-2b-it", "gemma2")
        layout_gemma_scope(hub, registry["gemma-scope-2b-pt-res-canonical"].saes_map["layer_1/width_16k/canonical"], d_in=64)
        save_tiny_model(hub, "meta-llama/Llama-3.1-8B-Instruct", "llama")
        layout_llama_scope(hub, 1, d_in=64, d_sae=512, norm_scaling_factor=registry["llama_scope_lxr_8x"].norm_scaling_factor["l1r_8x"])
        for preset in ("gemma-2-2b-it", "llama-3.1-8b-it"):
            out = folder / f"{preset}.h5"
            steps: dict[str, Any] = {}
            start = time.perf_counter()
            result = CliRunner().invoke(cli, ["cache", "--preset", preset, "--harmful", str(folder / "harmful.json"),
                                              "--harmless", str(folder / "harmless.txt"), "--layers", "1,2", "--sae-layers", "1",
                                              "--device", args.device, "--out", str(out)])
            steps["cache"] = {"exit": result.exit_code, "s": round(time.perf_counter() - start, 2)}
            if result.exit_code != 0:
                steps["cache"]["output"] = result.output[-2000:] + (repr(result.exception) if result.exception else "")
            elif analyze_group is not None:
                for stage in (["direction", "--layers", "1", "--positions", "-1"], ["candidates", "--ig-steps", "4", "--max-prompts", "4"],
                              ["greedy", "--k", "8", "--prompts", "0,1", "--generate", "4"]):
                    start = time.perf_counter()
                    result = CliRunner().invoke(analyze_group, [stage[0], str(out), "--device", args.device, *stage[1:]])
                    steps[stage[0]] = {"exit": result.exit_code, "s": round(time.perf_counter() - start, 2)}
                    if result.exit_code != 0:
                        steps[stage[0]]["output"] = result.output[-2000:] + (repr(result.exception) if result.exception else "")
                        break
            report[preset] = steps
    ok = all(step["exit"] == 0 for name, steps in report.items() if name != "device" for step in steps.values())
    report["ok"] = ok
    print(json.dumps(report, indent=2))
    if not ok:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--shape", choices=sorted(SHAPES), default="gemma-2-2b")
    t.add_argument("--device", default="auto")
    t.add_argument("--dtype", choices=["auto", "bfloat16", "float32", "float16"], default="auto")
    t.add_argument("--prompts", type=int, default=256, help="Prompts in all (half harmful, half harmless).")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--generate", type=int, default=0, help="Tokens generated per prompt in the cache run (the bare run never generates).")
    t.add_argument("--d-sae", type=int, help="SAE width (default: 16384, Gemma Scope 16k).")
    t.add_argument("--l0", type=int, default=80, help="Target active latents per token.")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--tmp", help="Folder for the study files (default: the system's temp dir).")
    t.add_argument("--json", help="Also write the report to this file.")
    e = sub.add_parser("e2e")
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--tmp")
    args = parser.parse_args()
    {"throughput": throughput, "e2e": e2e}[args.mode](args)


if __name__ == "__main__":
    main()

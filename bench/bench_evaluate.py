"""Ablation variants per second: AblationEvaluator (batched, from layer L) vs naive forwards.

    python bench/bench_evaluate.py [--model default|random] [--layer 12] [--variants 32]
                                   [--naive 6] [--batch 16] [--ks 4,8,16]

Variants are random sets of ``--ablate`` latents among those active on one demo harmful
prompt, ablated at every token of an SAE at ``--layer`` (a random JumpReLU SAE of
``--d-sae`` latents whose thresholds are calibrated on the prompt so that ~``--l0`` latents
fire per token: the cost of a forward does not depend on what the latents mean). Methods:

* naive: one forward from layer 0 per variant (batch 1), SAE spliced with ``sae_edits``;
* batched-from-0: ``--batch`` variants per forward from layer 0 (``RowMaskEdit``);
* evaluator: ``AblationEvaluator``, ``--batch`` variants per forward from layer L+1 (its
  one-off forward of layers 0..L is timed separately).

All three must agree (max |Δscore| is printed). Then the cost of greedy searches vs K: a
search per K from the top-K latents by gradient × activation of the score, the flip
threshold placed halfway between the baseline and the start score, counting batched forwards
and rows, one latent per step ("stepwise") and with the prefix pass (the default).
``--model random`` uses a randomly initialised Qwen2 with the default model's width (896)
and depth (24), for machines without the embedded model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.adapters import ADAPTERS  # noqa: E402
from cache.forward import pad_left, pad_token_id, refusal_log_odds  # noqa: E402
from cache.interventions import LatentEdit, RowMaskEdit, sae_edits  # noqa: E402
from cache.prompts import demo_prompts  # noqa: E402
from explorer.evaluate import AblationEvaluator, EvaluatorConfig  # noqa: E402
from explorer.greedy import search  # noqa: E402


def load(kind: str):
    if kind == "default":
        from cache.models import load_model

        loaded = load_model("default", device="cpu", dtype="float32")
        return loaded.model, loaded.tokenizer, loaded.adapter
    import transformers as tf
    from tests.tiny_tokenizers import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer("qwen2")
    config = tf.Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                            num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512)
    torch.manual_seed(0)
    return tf.Qwen2ForCausalLM(config).float().eval(), tokenizer, ADAPTERS["qwen2"]


def calibrated_sae(resid: torch.Tensor, d_sae: int, l0: int, layer: int, seed: int = 0):
    """A random JumpReLU SAE whose per-latent thresholds let ~l0 latents fire per token."""
    from tests.tiny_models import make_tiny_sae

    sae = make_tiny_sae("jumprelu", d_in=resid.shape[-1], d_sae=d_sae, layer=layer, seed=seed)
    with torch.no_grad():
        sae.b_dec.zero_()
        pre = resid @ sae.W_enc + sae.b_enc  # [tokens, d_sae]
        quantile = 1.0 - l0 / d_sae
        sae.threshold.copy_(torch.quantile(pre.float(), quantile, dim=0).clamp_min(1e-3))
        # decoder rows scaled so the reconstruction is about as large as the residual
        sae.W_dec.mul_(resid.norm(dim=-1).mean() / (l0 * pre.clamp_min(0).mean() + 1e-6))
    return sae.eval()


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["default", "random"], default="default")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--l0", type=int, default=64)
    parser.add_argument("--ablate", type=int, default=8, help="latents per variant")
    parser.add_argument("--variants", type=int, default=32, help="variants for the evaluator and batched-from-0")
    parser.add_argument("--naive", type=int, default=6, help="variants timed the naive way (the slowest)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--ks", default="4,8,16", help="K values for the greedy cost table ('' to skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, adapter = load(args.model)
    text = demo_prompts()[0][0].text
    ids = adapter.encode(tokenizer, text)
    refusal = adapter.refusal_token_ids(tokenizer)
    pad = pad_token_id(tokenizer)
    print(f"model {args.model}: {model.config.num_hidden_layers} layers, d {model.config.hidden_size}; prompt {len(ids)} tokens; "
          f"layer {args.layer}; SAE {args.d_sae} latents (l0≈{args.l0}); {torch.get_num_threads()} threads")
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[args.layer + 1][0]
    sae = calibrated_sae(hidden.float(), args.d_sae, args.l0, args.layer)

    prep_s, ev = timed(lambda: AblationEvaluator(model, sae, [ids], refusal, pad, EvaluatorConfig(layer=args.layer, max_batch=args.batch)))
    active = ev.active_latents(0)
    rng = np.random.default_rng(0)
    sets = [sorted(rng.choice(active, size=min(args.ablate, len(active)), replace=False).tolist()) for _ in range(args.variants)]
    print(f"active latents on the prompt: {len(active)}; evaluator preparation (layers 0..{args.layer} once + baseline): {prep_s:.2f} s")

    def naive(variant_sets):
        out = []
        for latents in variant_sets:
            with torch.no_grad(), sae_edits(model, {args.layer: sae}, [LatentEdit(layer=args.layer, latents=tuple(latents))]):
                out.append(float(refusal_log_odds(model(torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[:, -1], refusal)[0]))
        return np.array(out)

    def batched_from_zero(variant_sets):
        out = []
        for start in range(0, len(variant_sets), args.batch):
            chunk = variant_sets[start : start + args.batch]
            mask = ev.masks_of_sets(chunk)
            inputs = pad_left([ids] * len(chunk), pad, model.device)
            with torch.no_grad(), sae_edits(model, {args.layer: sae}, [RowMaskEdit(layer=args.layer, mask=mask)]):
                out.append(refusal_log_odds(model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1], refusal).numpy())
        return np.concatenate(out)

    naive_s, naive_scores = timed(lambda: naive(sets[: args.naive]))
    zero_s, zero_scores = timed(lambda: batched_from_zero(sets))
    fast_s, fast_scores = timed(lambda: ev.scores_of_sets(sets)[:, 0])
    rates = {"naive (1 variant/forward, from layer 0)": args.naive / naive_s,
             f"batched from layer 0 ({args.batch}/forward)": args.variants / zero_s,
             f"evaluator ({args.batch}/forward, from layer {args.layer + 1})": args.variants / fast_s}
    for name, rate in rates.items():
        print(f"  {name:48s} {rate:8.2f} variants/s")
    speedup = rates[list(rates)[2]] / rates[list(rates)[0]]
    print(f"  speed-up evaluator vs naive: {speedup:.1f}x (target >= 3x); incl. preparation over {args.variants} variants: "
          f"{(args.variants / (fast_s + prep_s)) / rates[list(rates)[0]]:.1f}x")
    print(f"  max |score difference| vs naive: evaluator {np.abs(fast_scores[: args.naive] - naive_scores).max():.2e}, "
          f"batched-from-0 {np.abs(zero_scores[: args.naive] - naive_scores).max():.2e}; "
          f"evaluator vs batched-from-0 over all: {np.abs(fast_scores - zero_scores).max():.2e}")

    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if not ks:
        return
    # rank latents by how strongly their decoder row writes along the top principal change of
    # the refusal score (gradient of the score w.r.t. the layer-L residual at the last token)
    resid = ev.resid[0].clone().requires_grad_(True)
    with torch.enable_grad():
        logits, _ = ev.forward_from([0], [resid])
        (grad,) = torch.autograd.grad(refusal_log_odds(logits, refusal).sum(), resid)
    effect = (ev.codes[0] * (grad @ sae.W_dec.T)).sum(0)  # gradient × activation per latent
    ranking = [int(i) for i in torch.argsort(effect, descending=True) if int(i) in set(active.tolist())]
    print(f"greedy search cost (ascending order, batch {args.batch}, threshold halfway between baseline and start score):")
    print("     K  pass      final  steps  forwards  rows   seconds")
    for k in ks:
        start_set = ranking[:k]
        start_score = float(ev.scores_of_sets([start_set])[0, 0])
        threshold = (float(ev.baseline[0]) + start_score) / 2
        for prefix in (False, True):
            before_f, before_r = ev.n_forwards, ev.n_rows
            seconds, trace = timed(lambda: search(ev, [0], start_set, threshold=threshold, order="ascending", prefix_pass=prefix))
            print(f"  {k:4d}  {'prefix' if prefix else 'stepwise':8s}  {len(trace.final):5d}  {len(trace.sizes) - 1:5d}  "
                  f"{ev.n_forwards - before_f:8d}  {ev.n_rows - before_r:4d}  {seconds:8.1f}")


if __name__ == "__main__":
    main()

"""How much of refusal an SAE can explain: the quality numbers of one SAE at one layer.

Measured on prompts the SAE never saw (the ``val`` split that ``train-sae`` holds out, same
files, fraction and seed), with the live model:

* **IG completeness split** (the check of ``analyze candidates``): the refusal direction
  (difference in means of the train-split prompts at the SAE's layer, last post-instruction
  position) is projected out at every layer; on the held-out harmful prompts the model refuses
  (fast score > threshold), integrated gradients along clean → ablated split the score drop
  into the latents' share and the error term's share. ``latent_fraction`` = latents / drop:
  the part of the direction's effect a latent-level explanation can reach.
* **Loss recovered** on held-out chat text (each held-out prompt + the model's own greedy
  response): next-token cross-entropy with the layer's residual replaced by the bare
  reconstruction ``decode(encode(x))`` (spliced) or by zeros, at every position but each
  sequence's first token (the attention sink, left as it is in all three runs):
  ``(CE_zero − CE_spliced) / (CE_zero − CE_clean)``.
* On the same text's residuals: explained variance (all tokens, and without the first token
  and the massive-norm template tokens), L0, dead latents (never active) and dense latents
  (active on > 10% of the tokens).

``measure_sae_quality`` returns a JSON-able dict; ``train-sae`` stores it as ``metrics.json``'s
``quality`` and ``measure-sae`` measures any SAE directory (the packaged ones included).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from cache.forward import pad_left, pad_token_id, refusal_log_odds
from cache.generation import greedy_response_ids
from cache.hooks import capture_resid, transform_resid
from cache.models import LoadedModel
from cache.prompts import Prompt
from cache.sae import decode, encode
from cache.train_sae import training_prompts
from explorer.candidates import ablated_codes, included_positions, integrated_gradients
from explorer.evaluate import AblationEvaluator, EvaluatorConfig
from explorer.live import LiveContext
from store.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE

#: A token whose residual norm exceeds this multiple of the median is a massive-norm token
#: (the same rule as train-sae's held-out metrics).
MASSIVE_NORM_FACTOR = 5.0
#: A latent active on more than this share of the tokens counts as dense.
DENSE_FRACTION = 0.10


@dataclass(frozen=True, kw_only=True)
class SAEQualityConfig:
    harmful: Path | None = None
    """Harmful prompt file; None (with ``harmless``) = the built-in demo prompts. Use the files
    the SAE was trained with, so the held-out split is prompts it never saw."""
    harmless: Path | None = None
    """Harmless prompt file."""
    harmful_column: str | None = None
    """CSV column / JSON key of the harmful prompts (auto-detected when None)."""
    harmless_column: str | None = None
    """CSV column / JSON key of the harmless prompts."""
    holdout_fraction: float = 0.25
    """Share of each label held out (train-sae's split: same fraction and seed)."""
    seed: int = 0
    """Seed of the held-out split (train-sae's --seed)."""
    max_refused_prompts: int = 16
    """Held-out refused harmful prompts the IG split is measured on (at most)."""
    ig_steps: int = 16
    """Riemann steps of integrated gradients (midpoints); more steps, better completeness."""
    ig_positions: Literal["post-instruction", "all"] = "post-instruction"
    """Where the ablation moves codes and error (as ``analyze candidates --positions``)."""
    direction_position: int = -1
    """Post-instruction position of the difference in means (negative from the end)."""
    response_tokens: int = 32
    """Tokens of the model's own response generated per held-out prompt for the CE text."""
    max_text_prompts: int | None = 32
    """Held-out prompts (both labels, alternating) whose chat text measures CE and the
    reconstruction statistics (None = all)."""
    refusal_threshold: float = -1.0
    """Fast-score log-odds above which a held-out harmful prompt counts as refused."""
    batch_size: int = 8
    """Sequences per forward."""

    def __post_init__(self) -> None:
        if (self.harmful is None) != (self.harmless is None):
            raise InputError("give both --harmful and --harmless, or neither (for the built-in demo prompts)")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise InputError("--holdout-fraction must be in (0, 1)")
        if self.max_refused_prompts < 1 or self.ig_steps < 1 or self.batch_size < 1 or self.response_tokens < 0:
            raise InputError("--max-refused-prompts, --ig-steps and --batch-size must be ≥ 1, --response-tokens ≥ 0")
        if self.max_text_prompts is not None and self.max_text_prompts < 1:
            raise InputError("--max-text-prompts must be ≥ 1")
        if self.direction_position >= 0:
            raise InputError("--direction-position counts from the end: -1 is the last post-instruction token")
        if self.ig_positions not in ("post-instruction", "all"):
            raise InputError("--ig-positions must be post-instruction or all")


def quality_prompts(config: SAEQualityConfig) -> list[Prompt]:
    """The prompts with train-sae's train/val split."""
    return training_prompts(config)


class QualityInputs:
    """What every SAE of one model is measured against, computed once per model: directions per
    layer, the held-out refused prompts, and the held-out chat text (prompt + own response)."""

    def __init__(self, loaded: LoadedModel, config: SAEQualityConfig, layers: Sequence[int], *,
                 directions: Mapping[int, torch.Tensor] | None = None, progress: bool = False) -> None:
        """``directions`` (layer → [d_model]) replaces the difference in means, e.g. a study's
        chosen direction or, in tests, a planted one."""
        self.loaded, self.config = loaded, config
        model, tokenizer, adapter = loaded.model, loaded.tokenizer, loaded.adapter
        self.pad_id = pad_token_id(tokenizer)
        self.n_positions = adapter.n_post_instruction(tokenizer)
        if -config.direction_position > self.n_positions:
            raise InputError(f"--direction-position {config.direction_position} is outside the {self.n_positions} post-instruction tokens")
        self.refusal_ids = tuple(adapter.refusal_token_ids(tokenizer))
        prompts = quality_prompts(config)
        encoded = [(p, adapter.encode(tokenizer, p.text)) for p in prompts]
        train = {label: [ids for p, ids in encoded if p.split == "train" and p.label == label] for label in ("harmful", "harmless")}
        val = {label: [ids for p, ids in encoded if p.split == "val" and p.label == label] for label in ("harmful", "harmless")}
        if not all(train.values()) or not val["harmful"]:
            raise InputError("the quality measurement needs train prompts of both labels and held-out harmful prompts")
        self.directions = dict(directions) if directions is not None else self._directions(train, sorted(set(layers)))
        scores = self._scores(val["harmful"])
        refused = [ids for ids, s in zip(val["harmful"], scores) if s > config.refusal_threshold]
        self.held_out_harmful = len(val["harmful"])
        self.refused = refused[: config.max_refused_prompts]
        # alternate the labels so a cap keeps both kinds of response (refusals and answers)
        mixed = [ids for pair in zip(val["harmful"], val["harmless"]) for ids in pair]
        longer = val["harmful"] if len(val["harmful"]) > len(val["harmless"]) else val["harmless"]
        mixed += longer[len(mixed) // 2 :]
        mixed = mixed[: config.max_text_prompts] if config.max_text_prompts else mixed
        self.texts: list[list[int]] = []
        self.prompt_lengths: list[int] = []
        for start in range(0, len(mixed), config.batch_size):
            chunk = mixed[start : start + config.batch_size]
            responses = greedy_response_ids(model, tokenizer, chunk, config.response_tokens) if config.response_tokens else [[] for _ in chunk]
            for ids, response in zip(chunk, responses):
                self.texts.append(list(ids) + response)
                self.prompt_lengths.append(len(ids))

    @torch.no_grad()
    def _directions(self, train: Mapping[str, list[list[int]]], layers: list[int]) -> dict[int, torch.Tensor]:
        sums = {label: {layer: None for layer in layers} for label in train}
        index = self.config.direction_position  # left padding: position -k is the same column for all rows
        for label, prompts in train.items():
            for start in range(0, len(prompts), self.config.batch_size):
                inputs = pad_left(prompts[start : start + self.config.batch_size], self.pad_id, self.loaded.model.device)
                with capture_resid(self.loaded.model, layers, stop=True) as captured:
                    self.loaded.model(**inputs, use_cache=False)
                for layer in layers:
                    part = captured[layer][-1][:, index].float().sum(0).cpu()
                    sums[label][layer] = part if sums[label][layer] is None else sums[label][layer] + part
        return {layer: sums["harmful"][layer] / len(train["harmful"]) - sums["harmless"][layer] / len(train["harmless"])
                for layer in layers}

    @torch.no_grad()
    def _scores(self, prompts: list[list[int]]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(prompts), self.config.batch_size):
            inputs = pad_left(prompts[start : start + self.config.batch_size], self.pad_id, self.loaded.model.device)
            logits = self.loaded.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
            out += refusal_log_odds(logits, self.refusal_ids).float().cpu().tolist()
        return out

    def facts(self) -> dict[str, Any]:
        return {
            "held_out_harmful": self.held_out_harmful, "refused_prompts": len(self.refused),
            "text_sequences": len(self.texts), "text_tokens": sum(map(len, self.texts)),
            "response_tokens": sum(len(t) - n for t, n in zip(self.texts, self.prompt_lengths)),
        }


# ------------------------------------------------------------------------------ IG completeness


def ig_split(inputs: QualityInputs, sae: SAE, layer: int, *, progress: bool = False) -> dict[str, Any]:
    """The direction-ablation drop of the refusal score on the held-out refused prompts, split
    by integrated gradients into the latents' and the error term's shares (summed over prompts)."""
    config = inputs.config
    if not inputs.refused:
        return {"ig_prompts": 0, "ig_drop": None, "ig_latent_share": None, "ig_error_share": None, "latent_fraction": None,
                "error_fraction": None, "ig_completeness_gap": None}
    live = LiveContext(loaded=inputs.loaded, saes={layer: sae}, refusal_ids=inputs.refusal_ids, pad_id=inputs.pad_id,
                       n_positions=inputs.n_positions, refusal_threshold=config.refusal_threshold)
    ev = AblationEvaluator.from_live(live, inputs.refused, EvaluatorConfig(layer=layer, max_batch=max(config.ig_steps, config.batch_size),
                                                                           prepare_batch=config.batch_size))
    masks = [included_positions(len(ids), inputs.n_positions, config.ig_positions, sae.W_dec.device) for ids in inputs.refused]
    targets = ablated_codes(live, ev, inputs.directions[layer], config.batch_size)
    shares, error_share, drop = integrated_gradients(ev, targets, masks, config.ig_steps, progress)
    latent = float(shares.sum())
    return {
        "ig_prompts": len(inputs.refused), "ig_steps": config.ig_steps, "ig_drop": drop, "ig_latent_share": latent,
        "ig_error_share": error_share,
        "latent_fraction": latent / drop if drop else None, "error_fraction": error_share / drop if drop else None,
        # midpoint-rule error: drop − (latents + error); small when the steps suffice
        "ig_completeness_gap": drop - latent - error_share,
    }


# ------------------------------------------------------------------------- loss recovered & co


def _token_ce(logits: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    """Σ CE of the next-token predictions whose target is marked in ``weight`` and whose source
    is a real token (not left padding), and their count. logits [b, w, V]; ids/weight/real [b, w]."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -log_probs.gather(-1, ids[:, 1:, None])[..., 0]  # [b, w-1]
    w = (weight[:, 1:] & real[:, :-1]).float()
    return float((nll * w).sum()), float(w.sum())


@torch.no_grad()
def reconstruction_quality(inputs: QualityInputs, sae: SAE, layer: int) -> dict[str, Any]:
    """Loss recovered (all text tokens, and the response tokens only) and the reconstruction
    statistics of the held-out chat text at ``layer``."""
    model, config = inputs.loaded.model, inputs.config
    totals = {f"{run}_{part}": 0.0 for run in ("clean", "spliced", "zero") for part in ("all", "response")}
    counts = {"all": 0.0, "response": 0.0}
    resid_rows, position_rows = [], []
    w = sae.W_dec
    for start in range(0, len(inputs.texts), config.batch_size):
        chunk = inputs.texts[start : start + config.batch_size]
        lengths = inputs.prompt_lengths[start : start + config.batch_size]
        batch = pad_left(chunk, inputs.pad_id, model.device)
        width = batch["input_ids"].shape[1]
        real = batch["attention_mask"].bool()
        sink = real & (batch["position_ids"] == 0)  # each sequence's first token: never edited
        response = torch.zeros_like(real)
        for row, (ids, n_prompt) in enumerate(zip(chunk, lengths)):
            # targets at positions ≥ the first response token (predicted from the prompt's end)
            response[row, width - len(ids) + n_prompt :] = True
        keep = sink[..., None]

        def splice(h: torch.Tensor) -> torch.Tensor:
            recon = decode(sae, encode(sae, h.to(device=w.device, dtype=w.dtype))).to(h)
            return torch.where(keep, h, recon)

        def zero(h: torch.Tensor) -> torch.Tensor:
            return torch.where(keep, h, torch.zeros_like(h))

        with capture_resid(model, [layer]) as captured:
            logits = model(**batch, use_cache=False).logits
        hidden = captured[layer][-1]
        for run, edit in (("clean", None), ("spliced", splice), ("zero", zero)):
            if edit is not None:  # one run's [batch, width, vocab] logits alive at a time
                del logits
                with transform_resid(model, layer, edit):
                    logits = model(**batch, use_cache=False).logits
            for part, weight in (("all", real), ("response", response)):
                value, n = _token_ce(logits, batch["input_ids"], weight, real)
                totals[f"{run}_{part}"] += value
                if run == "clean":
                    counts[part] += n
        del logits
        resid_rows.append(hidden[real].float().cpu())
        position_rows.append(batch["position_ids"][real].cpu())
    out: dict[str, Any] = {}
    for part in ("all", "response"):
        n = counts[part]
        if not n:
            out.update({f"ce_clean_{part}": None, f"ce_spliced_{part}": None, f"ce_zero_{part}": None,
                        f"loss_recovered_{part}": None})
            continue
        clean_ce, spliced_ce, zero_ce = (totals[f"{run}_{part}"] / n for run in ("clean", "spliced", "zero"))
        out.update({f"ce_clean_{part}": clean_ce, f"ce_spliced_{part}": spliced_ce, f"ce_zero_{part}": zero_ce,
                    f"loss_recovered_{part}": (zero_ce - spliced_ce) / (zero_ce - clean_ce) if zero_ce != clean_ce else None,
                    f"ce_tokens_{part}": int(n)})
    out["loss_recovered"] = out["loss_recovered_all"]
    out.update(code_statistics(sae, torch.cat(resid_rows), torch.cat(position_rows)))
    return out


@torch.no_grad()
def code_statistics(sae: SAE, resid: torch.Tensor, position: torch.Tensor) -> dict[str, Any]:
    """Explained variance (all tokens; without each sequence's first token and the massive-norm
    tokens), L0, dead and dense latents of residuals [n, d] at token positions [n]."""
    codes = encode(sae, resid)  # [n, d_sae]
    recon = decode(sae, codes).float()
    norms = resid.norm(dim=-1)
    ordinary = (position > 0) & (norms <= MASSIVE_NORM_FACTOR * norms.median())
    active = codes != 0
    firing = active.float().mean(0)  # [d_sae] share of tokens each latent is active on
    return {
        "explained_variance": _explained_variance(resid, recon),
        "explained_variance_ordinary_tokens": _explained_variance(resid[ordinary], recon[ordinary]),
        "l0": float(active.sum(-1).float().mean()),
        "dead_latents": int((firing == 0).sum()), "dead_fraction": float((firing == 0).float().mean()),
        "dense_latents": int((firing > DENSE_FRACTION).sum()), "dense_fraction": float((firing > DENSE_FRACTION).float().mean()),
        "statistics_tokens": int(resid.shape[0]), "massive_norm_tokens": int(((position > 0) & ~ordinary).sum()),
    }


def _explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float | None:
    if x.shape[0] < 2:
        return None
    total = (x - x.mean(0)).pow(2).sum()
    return float(1.0 - (x - x_hat).pow(2).sum() / total) if total > 0 else None


def measure_sae_quality(inputs: QualityInputs, sae: SAE, layer: int, *, progress: bool = False) -> dict[str, Any]:
    """Every quality number of the SAE at ``layer`` (JSON-able; None where not measurable)."""
    return {**ig_split(inputs, sae, layer, progress=progress), **reconstruction_quality(inputs, sae, layer),
            **inputs.facts(), "dense_rule": f"active on > {DENSE_FRACTION:.0%} of the statistics tokens",
            "massive_norm_rule": f"norm > {MASSIVE_NORM_FACTOR:g} x median", "config": _jsonable(asdict(inputs.config))}


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}


def quality_text(layer: int, q: Mapping[str, Any]) -> str:
    """One line of the numbers that matter, from ``measure_sae_quality``'s dict."""
    def pct(value: Any) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"

    ig = (f"latents carry {pct(q.get('latent_fraction'))} of the direction's drop "
          f"({q['ig_drop']:.2f} = latents {q['ig_latent_share']:.2f} + error {q['ig_error_share']:.2f}, "
          f"{q['ig_prompts']} refused held-out prompts)" if q.get("ig_drop") is not None
          else "no held-out prompt refused: no IG split")
    return (f"layer {layer}: {ig}; loss recovered {pct(q.get('loss_recovered'))} "
            f"(responses {pct(q.get('loss_recovered_response'))}); explained variance without first/massive-norm "
            f"tokens {pct(q.get('explained_variance_ordinary_tokens'))}; L0 {q['l0']:.1f}; dead {pct(q.get('dead_fraction'))}, "
            f"dense {pct(q.get('dense_fraction'))} of {q['statistics_tokens']} held-out tokens")


# ------------------------------------------------------------------------------- entry points


def quality_hook(train_config: Any) -> Callable[[LoadedModel, Sequence[int]], Callable[[int, Any], dict[str, Any]]]:
    """``train_saes``'s ``quality`` hook for a ``TrainSAEConfig``: the same prompt files, split
    and seed, so the numbers are measured on the prompts the SAE was not trained on."""
    def prepare(loaded: LoadedModel, layers: Sequence[int]) -> Callable[[int, Any], dict[str, Any]]:
        device = loaded.model.device
        config = SAEQualityConfig(
            harmful=train_config.harmful, harmless=train_config.harmless, harmful_column=train_config.harmful_column,
            harmless_column=train_config.harmless_column, holdout_fraction=train_config.holdout_fraction,
            seed=train_config.seed, batch_size=train_config.for_device(device).forward_batch_size,
        )
        inputs = QualityInputs(loaded, config, layers)
        return lambda layer, sae: measure_sae_quality(inputs, _float32(sae).to(device), layer)

    return prepare


def _float32(sae: SAE) -> SAE:
    # fp16 weights on a CPU are slow and lose the small IG shares; measure in float32
    return sae.to(dtype=torch.float32) if sae.W_dec.dtype != torch.float32 else sae


def measure_specs(specs: Sequence[Any], config: SAEQualityConfig, *, model: str = "default", device: str = "auto",
                  dtype: str = "auto", write: bool = False, loaded: LoadedModel | None = None,
                  progress: bool = True) -> dict[int, dict[str, Any]]:
    """Measure resolved ``SAESpec``s (layers filled in) with one model; ``write`` merges each
    result into its directory's ``metrics.json`` as ``quality``."""
    from cache.models import load_model
    from cache.sae import load_sae

    loaded = loaded or load_model(model, device=device, dtype=dtype)
    hidden, depth = int(loaded.model.config.hidden_size), int(loaded.model.config.num_hidden_layers)
    layers = [int(spec.layer) for spec in specs]
    if len(set(layers)) != len(layers):
        raise InputError("give one SAE per layer")
    saes = {int(spec.layer): load_sae(spec, d_model=hidden, n_layers=depth, device=loaded.model.device) for spec in specs}
    inputs = QualityInputs(loaded, config, layers, progress=progress)
    results = {}
    for spec in specs:
        layer = int(spec.layer)
        quality = measure_sae_quality(inputs, saes[layer], layer, progress=progress)
        quality["model"], quality["sae"] = loaded.model_id, _sae_label(spec)
        results[layer] = quality
        if write and spec.is_local:
            path = Path(spec.path).expanduser() / "metrics.json"
            try:
                metrics = json.loads(path.read_text()) if path.is_file() else {}
            except ValueError:
                metrics = {}
            metrics["quality"] = quality
            path.write_text(json.dumps(metrics, indent=2) + "\n")
    return results


def _sae_label(spec: Any) -> str:
    """``packaged layer_14`` for a packaged SAE (its path differs per install), else the spec."""
    from cache.default_saes import default_sae_dirs

    if spec.is_local:
        where = Path(spec.path).expanduser().resolve()
        for layer, directory in default_sae_dirs().items():
            if directory.resolve() == where:
                return f"packaged layer_{layer}"
    return spec.label

"""Train TopK SAEs on a model's residual stream, on a corpus that exists offline anywhere.

Three stages, each cheap to rerun or resume:

1. **Corpus** (deterministic, no downloads): chat-formatted prompts from the prompt files (a
   held-out share of them measures quality), user-supplied text files, and docstrings of
   installed Python packages read with ``ast`` (nothing is imported or executed), some of them
   wrapped as chat turns so the template tokens appear in many contexts. Chunks hold at most
   ``context`` tokens; a sha256 over the token ids identifies the corpus.
2. **Activations** (``cache.activation_cache``): one forward pass per batch that stops after
   the last requested layer, every real (non-padding) token stored as float16 in an HDF5 file
   per model and layers, keyed by segment: tokens accumulate across runs, every training
   reuses the segments already there, a killed or time-boxed (``--capture-seconds``) capture
   continues where it stopped, and a training runs on whatever has been captured.
3. **Training** through sae-lens's ``SAETrainer`` fed from that file (TopK or BatchTopK, aux-k
   loss for dead latents), then held-out metrics and sae-lens's on-disk format with float16 weights.
   Massive-norm tokens (each sequence's first token, ~100x the median norm, and a few chat
   template tokens, ~10x) are rescaled to the median norm for training: left as they are,
   they carry almost all of the squared error, and most latents die.

The packaged SAEs of the embedded default model are listed by ``cache.default_saes``.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.adapters import n_layers
from cache.activation_cache import collect_activations, default_cache_path, read_layer
from cache.models import LoadedModel, load_model
from cache.prompts import Prompt, demo_prompts, load_prompts, split_prompts
from cache.pipeline import package_versions
from cache.sae_corpus import Segment, build_corpus, corpus_digest, corpus_stats, doc_sources
from store.errors import InputError

HOOK_NAME = "blocks.{layer}.hook_resid_post"
#: A held-out token whose residual norm exceeds this multiple of the median counts as a
#: massive activation (attention-sink first tokens, some template tokens) in the metrics.
OUTLIER_NORM_FACTOR = 5.0
MASSIVE_POLICIES = ("rescale", "drop", "keep")
#: Training tokens sampled (with the held-out ones) to decide which latents are dead.
DEAD_SAMPLE_TOKENS = 65_536
#: A latent active on more than this share of those tokens counts as dense.
DENSE_FRACTION = 0.10
#: ``quality(loaded, layers)`` -> ``measure(layer, sae) -> dict``: the refusal-level quality
#: numbers (``explorer.sae_quality``) that ``train-sae`` adds to each ``metrics.json``; passed
#: in by the command because they need the analysis layer, which ``cache`` does not import.
QualityHook = Callable[[LoadedModel, Sequence[int]], Callable[[int, Any], dict[str, Any]]]


@dataclass(frozen=True, kw_only=True)
class TrainSAEConfig:
    model: str = "default"
    """'default' or 'qwen-1.5b' (the embedded models), a local directory, or a Hugging Face id in
    the local cache."""
    layers: tuple[int, ...]
    """Layers to train an SAE for (output of block L); one activation pass serves them all."""
    out: Path
    """Output directory; each SAE goes to ``out/layer_<L>/``."""
    harmful: Path | None = None
    """Harmful prompt file; None (with ``harmless``) = the built-in demo prompts."""
    harmless: Path | None = None
    """Harmless prompt file."""
    harmful_column: str | None = None
    """CSV column / JSON key of the harmful prompts (auto-detected when None)."""
    harmless_column: str | None = None
    """CSV column / JSON key of the harmless prompts."""
    text_files: tuple[Path, ...] = ()
    """Extra UTF-8 text files added to the corpus (before the docstrings)."""
    doc_packages: tuple[str, ...] = ("stdlib", "numpy", "torch", "transformers")
    """Installed packages whose docstrings fill the corpus ('stdlib' = Python's own library)."""
    n_tokens: int = 100_000
    """Training tokens to gather (prompts + text files + docstrings); held-out prompts extra."""
    response_tokens: int = 0
    """Append the model's own greedy response (up to this many tokens) to every chat-formatted
    prompt, so its refusals and answers are trained on (generated once, then kept on disk)."""
    context: int = 128
    """Longest chunk, in tokens."""
    chat_fraction: float = 0.3
    """Share of docstring chunks wrapped as a chat user turn (template tokens in context)."""
    holdout_fraction: float = 0.25
    """Share of each prompt label held out for the metrics (never trained on)."""
    d_sae: int = 2048
    """Number of latents."""
    k: int = 32
    """Active latents per token (TopK), or on average over a batch (BatchTopK)."""
    architecture: Literal["topk", "batchtopk"] = "topk"
    """topk: exactly k latents per token; batchtopk: the k·batch largest codes of a batch
    (a token may use more or fewer), saved as a JumpReLU SAE with the learnt threshold."""
    epochs: float = 6.0
    """Passes over the training tokens."""
    lr: float = 3e-3
    """Adam learning rate (constant after a short warm-up, decayed over the last fifth); high
    because these runs are short (hundreds of steps): 3e-3 beat 1e-3 on the default model."""
    batch_size: int | None = None
    """Training batch in tokens; None = 1024 on a CPU, 4096 on a GPU."""
    dead_window_tokens: int = 50_000
    """A latent silent for this many training tokens counts as dead for the aux-k loss."""
    aux_k_coefficient: float = 1.0
    """Weight of the aux-k loss that revives dead latents."""
    massive_tokens: str = "rescale"
    """Training treatment of massive-norm tokens (each sequence's first token and some template
    tokens, 10-100x the median norm, which would otherwise dominate the MSE and starve the
    other latents): 'rescale' them to the median norm (their directions are learnt, and TopK
    codes grow with the input, so they still reconstruct), 'drop' them, or 'keep' them."""
    forward_batch_size: int | None = None
    """Sequences per model forward pass; None = 8 on a CPU, 128 on a GPU."""
    seed: int = 0
    """Seeds the corpus order, the held-out split, the initialisation and the batch order."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (model and SAE)."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."""
    activations: Path | None = None
    """The activation cache file; None = the project's one for this model and layers (under
    ``~/.cache/refusal-explorer/activations``). Rows are kept per segment, so tokens
    accumulate across runs and every training reuses what is there (cache.activation_cache)."""
    capture_seconds: float | None = None
    """Stop the activation capture after about this many seconds and train on what the cache
    holds; the next run continues the capture (for a machine where a long run is interrupted)."""
    post_instruction_weight: int = 1
    """Each post-instruction token of a chat-formatted segment (where refusal is decided) enters
    the training set this many times."""
    overwrite: bool = False
    """Replace SAEs already in ``out``."""
    quality: bool = True
    """After training, measure how much of refusal each SAE carries (IG split of the direction
    ablation, loss recovered on held-out chat text; ``measure-sae``'s numbers) into
    ``metrics.json``'s ``quality`` (a few minutes per SAE on a CPU)."""

    def __post_init__(self) -> None:
        if not self.layers:
            raise InputError("give at least one layer (--layers 12)")
        if len(set(self.layers)) != len(self.layers) or any(layer < 0 for layer in self.layers):
            raise InputError(f"--layers must be distinct non-negative integers, got {list(self.layers)}")
        if (self.harmful is None) != (self.harmless is None):
            raise InputError("give both --harmful and --harmless, or neither (for the built-in demo prompts)")
        for path in self.text_files:
            if not Path(path).is_file():
                raise InputError(f"--text {path}: no such file")
        if self.n_tokens < 1 or self.context < 8 or self.response_tokens < 0:
            raise InputError("--tokens must be ≥ 1, --context ≥ 8 and --response-tokens ≥ 0")
        if not 0.0 <= self.chat_fraction <= 1.0 or not 0.0 < self.holdout_fraction < 1.0:
            raise InputError("--chat-fraction must be in [0, 1] and --holdout-fraction in (0, 1)")
        if self.d_sae < 1 or not 1 <= self.k <= self.d_sae:
            raise InputError(f"need --d-sae ≥ 1 and 1 ≤ --k ≤ --d-sae (got d_sae={self.d_sae}, k={self.k})")
        if not self.epochs > 0 or not self.lr > 0 or (self.batch_size or 1) < 1 or (self.forward_batch_size or 1) < 1:
            raise InputError("--epochs and --lr must be > 0, --batch-size and --forward-batch-size ≥ 1")
        if self.architecture not in ("topk", "batchtopk"):
            raise InputError(f"--architecture must be topk or batchtopk, not {self.architecture!r}")
        if self.massive_tokens not in MASSIVE_POLICIES:
            raise InputError(f"--massive-tokens must be one of {', '.join(MASSIVE_POLICIES)}, not {self.massive_tokens!r}")
        if self.capture_seconds is not None and not self.capture_seconds > 0:
            raise InputError("--capture-seconds must be > 0")
        if self.post_instruction_weight < 1:
            raise InputError("--post-instruction-weight must be ≥ 1")
        if self.dead_window_tokens < 1 or self.aux_k_coefficient < 0:
            raise InputError("--dead-window must be ≥ 1 token and the aux-k coefficient ≥ 0")

    def for_device(self, device: torch.device) -> TrainSAEConfig:
        """The config with its batch sizes filled in for ``device`` (a GPU wants big batches:
        the model and the SAE are tiny next to its memory)."""
        gpu = torch.device(device).type == "cuda"
        return replace(self, batch_size=self.batch_size or (4096 if gpu else 1024),
                       forward_batch_size=self.forward_batch_size or (128 if gpu else 8))

    def layer_dir(self, layer: int) -> Path:
        return Path(self.out) / f"layer_{layer}"


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


def activation_cache_path(config: TrainSAEConfig, loaded: LoadedModel) -> Path:
    """``--activations``, else the project's cache file for this model that holds the layers."""
    if config.activations is not None:
        return Path(config.activations)
    from cache.default_model import cache_home

    return default_cache_path(cache_home() / "activations", loaded, config.layers)


# --------------------------------------------------------------------------------------------
# Training and metrics
# --------------------------------------------------------------------------------------------


def training_rows(data: dict[str, np.ndarray], policy: str, post_instruction_weight: int = 1) -> tuple[torch.Tensor, int]:
    """The training tokens [n, d] (float16) with massive-norm ones treated per ``policy``, and
    how many were massive (the first token of a sequence, or norm > OUTLIER_NORM_FACTOR x the
    median). Post-instruction tokens appear ``post_instruction_weight`` times."""
    train = np.flatnonzero(~data["holdout"])
    if post_instruction_weight > 1:
        post = train[data["post_instruction"][train]]
        train = np.sort(np.concatenate([train, np.repeat(post, post_instruction_weight - 1)]))
    if not len(train):
        raise InputError("no training tokens are cached yet; give the capture more time (--capture-seconds)")
    acts = torch.from_numpy(data["acts"][train])  # [n_train, d] float16
    norms = torch.cat([chunk.float().norm(dim=-1) for chunk in acts.split(16384)])
    median = norms.median()
    massive = (norms > OUTLIER_NORM_FACTOR * median) | torch.from_numpy(data["position"][train] == 0)
    if policy == "drop":
        acts = acts[~massive]
    elif policy == "rescale":
        acts = acts.clone()
        acts[massive] = (acts[massive].float() * (median / norms[massive])[:, None]).half()
    return acts, int(massive.sum())


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled float32 batches [batch, d] from float16 rows, reshuffled each epoch."""
    generator = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    step = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - step + 1, step):
            yield acts[order[start : start + step].to(acts.device)].float()


def _train_one(config: TrainSAEConfig, layer: int, train: torch.Tensor, model_id: str, device: torch.device,
               progress: bool) -> tuple[Any, dict[str, Any]]:
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = int(train.shape[1])
    torch.manual_seed(config.seed + layer)
    config_class, sae_class = ((BatchTopKTrainingSAEConfig, BatchTopKTrainingSAE) if config.architecture == "batchtopk"
                               else (TopKTrainingSAEConfig, TopKTrainingSAE))
    sae_cfg = config_class(
        d_in=d_in, d_sae=config.d_sae, k=config.k, dtype="float32", device=str(device),
        # a constant rescale to norm sqrt(d_in), folded into the weights after training; the
        # aux-k loss allows it (not layer norm)
        normalize_activations="expected_average_only_in", aux_loss_coefficient=config.aux_k_coefficient,
        metadata=SAEMetadata(model_name=model_id, hook_name=HOOK_NAME.format(layer=layer),
                             context_size=config.context, prepend_bos=False),
    )
    sae = sae_class(sae_cfg)
    total = int(config.epochs * train.shape[0])
    steps = max(1, total // config.batch_size)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * config.batch_size, train_batch_size_samples=config.batch_size,
        lr=config.lr, lr_end=config.lr, lr_scheduler_name="constant", lr_warm_up_steps=min(50, steps // 10),
        lr_decay_steps=steps // 5, device=str(device),
        dead_feature_window=max(1, config.dead_window_tokens // config.batch_size),
        feature_sampling_window=10 * steps + 1,  # only a wandb logging window here
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
    )
    if device.type == "cuda":
        train = train.to(device)  # shuffled batches are gathered on the GPU, not copied per step
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(train, config.batch_size, config.seed + layer))
    # Scale and decoder bias from the data itself rather than from a few trainer batches: the
    # bias starts at the mean activation (in the scaled space the trainer works in).
    pick = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(config.seed))[:20_000]
    sample = train[pick.to(train.device)].float()
    scale = math.sqrt(d_in) / float(sample.norm(dim=-1).mean())
    trainer.activation_scaler.scaling_factor = scale
    with torch.no_grad():
        sae.b_dec.copy_((sample.mean(0) * scale).to(sae.b_dec))
    started = time.perf_counter()
    import sae_lens.training.sae_trainer as trainer_module

    if not progress:
        trainer_module.tqdm = _silent_tqdm  # the trainer has no switch for its bar
    try:
        trainer.fit()
    finally:
        trainer_module.tqdm = tqdm
    seconds = time.perf_counter() - started
    info = {"steps": steps, "training_samples": steps * config.batch_size, "seconds": round(seconds, 2),
            "tokens_per_second": round(steps * config.batch_size / seconds, 1), "activation_scale": scale,
            "dead_feature_window_steps": trainer_cfg.dead_feature_window,
            "lr_warm_up_steps": trainer_cfg.lr_warm_up_steps, "lr_decay_steps": trainer_cfg.lr_decay_steps,
            "dead_at_end_of_training": int(trainer.dead_neurons.sum())}
    return sae, info


def _silent_tqdm(*args: Any, **kwargs: Any) -> Any:
    return tqdm(*args, **{**kwargs, "disable": True})


def _save_fp16(sae: Any, directory: Path) -> None:
    """sae-lens's inference format (decoder-norm rescale folded) with float16 weights."""
    from sae_lens import SAE

    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inference = SAE.load_from_disk(tmp, device="cpu", dtype="float16")
    inference.save_model(directory)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the rows of ``x`` [n, d]."""
    if x.shape[0] < 2:
        return float("nan")
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return float(1.0 - residual / total)


@torch.no_grad()
def evaluate_sae(sae: Any, data: dict[str, np.ndarray], *, seed: int = 0) -> dict[str, Any]:
    """Held-out metrics: explained variance (all tokens; without each sequence's first token;
    without it and the other massive-norm tokens; the user's instruction tokens only; the
    post-instruction template tokens only), L0, and dead latents (no activation on the
    held-out tokens nor a training sample)."""
    from cache.sae import decode, encode

    holdout = torch.from_numpy(data["acts"][data["holdout"]]).float()  # [n_holdout, d]
    codes = encode(sae, holdout)  # [n_holdout, d_sae]
    recon = decode(sae, codes).float()
    norms = holdout.norm(dim=-1)
    position = torch.from_numpy(data["position"][data["holdout"]])
    massive = norms > OUTLIER_NORM_FACTOR * norms.median()
    ordinary = (position > 0) & ~massive
    post = torch.from_numpy(data["post_instruction"][data["holdout"]])
    instruction = torch.from_numpy(data["instruction"][data["holdout"]])
    response = torch.from_numpy(data["response"][data["holdout"]])
    extra: dict[str, float] = {}
    train_rows = np.flatnonzero(~data["holdout"])
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(train_rows, size=min(DEAD_SAMPLE_TOKENS, len(train_rows)), replace=False))
    counts = (codes != 0).sum(0)  # [d_sae] tokens each latent is active on
    for start in range(0, len(sample_rows), 8192):
        chunk = torch.from_numpy(data["acts"][sample_rows[start : start + 8192]]).float()
        counts += (encode(sae, chunk) != 0).sum(0)
    fired = counts > 0
    dense = counts > DENSE_FRACTION * (holdout.shape[0] + len(sample_rows))
    l0 = (codes != 0).sum(-1).float()
    if bool(response.any()):  # the corpus has the model's own responses (--response-tokens)
        extra["explained_variance_response_tokens"] = explained_variance(holdout[response], recon[response])
    return {
        **extra,
        "explained_variance": explained_variance(holdout, recon),
        "explained_variance_without_first_token": explained_variance(holdout[position > 0], recon[position > 0]),
        "explained_variance_ordinary_tokens": explained_variance(holdout[ordinary], recon[ordinary]),
        "explained_variance_post_instruction": explained_variance(holdout[post], recon[post]),
        "explained_variance_instruction_tokens": explained_variance(holdout[instruction], recon[instruction]),
        "mse_per_token": float((holdout - recon).pow(2).sum(-1).mean()),
        "l0": float(l0.mean()),
        "l0_ordinary_tokens": float(l0[ordinary].mean()) if bool(ordinary.any()) else float("nan"),
        "dead_fraction": float(1.0 - fired.float().mean()),
        "dead_latents": int((~fired).sum()),
        "dense_fraction": float(dense.float().mean()),
        "dense_latents": int(dense.sum()),
        "d_sae": int(codes.shape[-1]),
        "holdout_tokens": int(holdout.shape[0]),
        "holdout_first_tokens": int((position == 0).sum()),
        "holdout_massive_norm_tokens": int(massive.sum()),
        "holdout_post_instruction_tokens": int(post.sum()),
        "holdout_instruction_tokens": int(instruction.sum()),
        "holdout_response_tokens": int(response.sum()),
        "massive_norm_rule": f"norm > {OUTLIER_NORM_FACTOR:g} x median held-out norm",
        "dead_sample_tokens": int(holdout.shape[0] + len(sample_rows)),
        "median_norm": float(norms.median()),
        "max_norm": float(norms.max()),
    }


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def training_prompts(config: Any) -> list[Prompt]:
    """The prompts with their train/val split, for `train-sae` and `measure-sae` alike (one split,
    so an SAE is measured on the prompts it was not trained on). ``config`` has ``harmful``,
    ``harmless`` (None: the built-in demo set), ``harmful_column``, ``harmless_column``,
    ``holdout_fraction`` and ``seed``."""
    if config.harmful is None:
        harmful, harmless = demo_prompts()
    else:
        harmful = load_prompts(config.harmful, label="harmful", column=config.harmful_column)
        harmless = load_prompts(config.harmless, label="harmless", column=config.harmless_column)
    return split_prompts(harmful + harmless, holdout_fraction=config.holdout_fraction, seed=config.seed)


def _check_outputs(config: TrainSAEConfig) -> None:
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a directory")
    if not config.overwrite:
        taken = [config.layer_dir(layer) for layer in config.layers if config.layer_dir(layer).exists()]
        if taken:
            raise InputError(f"{taken[0]} already exists; pass --overwrite to replace it")


def train_saes(
    config: TrainSAEConfig, *, loaded: LoadedModel | None = None, progress: bool = True,
    command: Sequence[str] | None = None, quality: QualityHook | None = None,
) -> dict[int, dict[str, Any]]:
    """Gather the corpus, cache activations, train one SAE per layer; returns metrics per layer.

    ``loaded`` reuses a model in memory; ``command`` is recorded in ``training.json`` (default:
    this process's argv); ``quality`` adds the refusal-level numbers as ``metrics["quality"]``.
    """
    wall = time.perf_counter()
    _check_outputs(config)
    prompts = training_prompts(config)
    loaded = loaded or load_model(config.model, device=config.device, dtype=config.dtype)
    config = config.for_device(loaded.model.device)
    depth = n_layers(loaded.model)
    bad = [layer for layer in config.layers if layer >= depth]
    if bad:
        raise InputError(f"layer {bad[0]} is out of range: {loaded.model_id} has {depth} layers (0-{depth - 1})")
    started = time.perf_counter()
    segments = build_corpus(loaded, prompts, config)
    digest = corpus_digest(segments)
    corpus_seconds = time.perf_counter() - started
    stats = {**corpus_stats(segments), "doc_sources": doc_sources(config.doc_packages)}
    if stats["holdout_tokens"] < 2:
        raise InputError("the held-out prompts have fewer than 2 tokens; give more prompts or a larger --holdout-fraction")
    activation_path = activation_cache_path(config, loaded)
    forward = collect_activations(loaded, segments, config.layers, activation_path, batch_size=config.forward_batch_size,
                                  max_seconds=config.capture_seconds, progress=progress)
    device = loaded.model.device
    record_base = {
        "command": shlex.join(list(command) if command is not None else sys.argv),
        "config": {k: ([str(p) for p in v] if isinstance(v, tuple) and v and isinstance(v[0], Path)
                       else str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "model": loaded.model_id, "model_revision": loaded.revision, "corpus_sha256": digest,
        "corpus": stats, "corpus_seconds": round(corpus_seconds, 2),
        "activations": {**forward, "path": str(activation_path)},
        "seed": config.seed, "versions": package_versions(),
    }
    results: dict[int, dict[str, Any]] = {}
    from cache.sae import load_sae

    measure = quality(loaded, sorted(config.layers)) if quality is not None else None

    for layer in sorted(config.layers):
        data = read_layer(activation_path, layer, segments)
        if data["holdout"].sum() < 2:
            raise InputError("the held-out prompts are not cached yet; give the capture more time (--capture-seconds)")
        train, n_massive = training_rows(data, config.massive_tokens, config.post_instruction_weight)  # [n_train, d] float16
        sae, info = _train_one(config, layer, train, loaded.model_id, device, progress)
        info.update(massive_tokens=config.massive_tokens, massive_train_tokens=n_massive)
        directory = config.layer_dir(layer)
        _save_fp16(sae, directory)
        saved = load_sae(str(directory), d_model=int(loaded.model.config.hidden_size), n_layers=depth)
        metrics = {"layer": layer, "hook_name": HOOK_NAME.format(layer=layer), "architecture": config.architecture,
                   "k": config.k, **evaluate_sae(saved, data, seed=config.seed)}
        if measure is not None:
            metrics["quality"] = measure(layer, saved)
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        record = {**record_base, "layer": layer, "training": info, "train_tokens": int(train.shape[0]),
                  "wall_seconds": round(time.perf_counter() - wall, 2)}
        (directory / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        results[layer] = metrics
        del train, data, sae
    return results

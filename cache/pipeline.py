"""The cache stage: prompts → model (+ SAEs) → one crash-safe study file.

Everything cheap is validated before the model loads, and everything that could refuse the run
(layers, SAEs, an existing output) before the output file is touched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cache.adapters import n_layers
from cache.forward import forward_with_residuals, pad_token_id
from cache.generation import RefusalDetector, greedy_generate
from cache.models import LoadedModel, load_model, token_display_strings
from cache.prompts import Prompt, demo_prompts, load_prompts, prompt_set_digest, split_prompts
from store import PromptBatch, StudySpec, StudyWriter
from store.errors import InputError
from store.lock import study_lock
from store.writer import check_resumable, require_study_file
from store.schema import RESID_ROWS_ALL, RESID_ROWS_POST_INSTRUCTION

LOGIT_LENS_TOKENS = 8


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    model: str = "default"
    """'default' (the embedded model; a preset: without --layers the demo's layers 12,14,16,18 and
    the packaged SAEs at 14 and 18), 'qwen-1.5b' (the opt-in embedded 1.5B, extra `stronger`;
    layers 10-18, no SAEs), a local directory, or a Hugging Face id in the local cache."""
    harmful: Path | None = None
    """Harmful prompt file (JSON, JSONL, CSV, TXT); None = the built-in demo set."""
    harmless: Path | None = None
    """Harmless prompt file; None = the built-in demo set."""
    harmful_column: str | None = None
    """CSV column / JSON key of the harmful prompts (auto-detected when None)."""
    harmless_column: str | None = None
    """CSV column / JSON key of the harmless prompts."""
    max_prompts: int | None = None
    """Use at most this many prompts per label (the first ones)."""
    layers: tuple[int, ...]
    """Layers whose residuals are cached (layer L = output of decoder block L)."""
    out: Path
    """The study file to write."""
    positions: str = RESID_ROWS_POST_INSTRUCTION
    """Residuals at the post-instruction template tokens, or at all tokens."""
    generate: int = 0
    """Greedy-generate this many tokens per prompt and run the refusal detector (0 = no)."""
    saes: tuple[str, ...] = ()
    """SAE specs ``[LAYER=]RELEASE:SAE_ID``, ``[LAYER=]DIR`` or ``LAYER=default`` (the packaged SAE
    of the embedded model); their codes are cached at every token."""
    refusal_tokens: tuple[str, ...] | None = None
    """First response tokens counted as refusal by the fast score (None = the family's, e.g. "I")."""
    refusal_threshold: float = -1.0
    """Fast-score (log-odds) threshold above which a prompt counts as refused: −1.0 ≈ p 0.27
    (on the default model, refused prompts measured p("I") ≥ 0.40, answered ones ≤ 0.22)."""
    refusal_phrases: Path | None = None
    """Text file of refusal phrases for the detector (None = the built-in list)."""
    holdout_fraction: float = 0.25
    """Share of each label marked split=val, held out for choosing the direction."""
    seed: int = 0
    """Seed of the train/val split."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."""
    batch_size: int = 8
    """Prompts per forward pass (a preset picks it from the GPU's memory)."""
    resume: bool = False
    """Continue an interrupted study file."""
    overwrite: bool = False
    """Replace an existing study file (a study file only: anything else is refused)."""
    max_prompt_tokens: int | None = None
    """Refuse prompts longer than this many tokens with the chat template (None = the model's
    context length minus --generate)."""

    def __post_init__(self) -> None:
        if not self.layers:
            raise InputError("give at least one layer (--layers 6,12)")
        if any(layer < 0 for layer in self.layers):
            raise InputError(f"layers must be non-negative, got {list(self.layers)}")
        if self.positions not in (RESID_ROWS_POST_INSTRUCTION, RESID_ROWS_ALL):
            raise InputError(f"--positions must be post-instruction or all, not {self.positions!r}")
        if self.batch_size < 1 or self.generate < 0:
            raise InputError("--batch-size must be ≥ 1 and --generate ≥ 0")
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise InputError("--max-prompts must be ≥ 1")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise InputError("--max-prompt-tokens must be ≥ 1")

    def identity(self, prompts_digest: str, model_id: str, revision: str) -> dict[str, Any]:
        """What fixes the file's contents; a resumed run must match it exactly. Batch size and
        device are left out so a run can resume with a smaller batch or on another device."""
        return {
            "model": model_id, "model_revision": revision, "prompts": prompts_digest, "layers": list(self.layers),
            "positions": self.positions, "generate": self.generate, "saes": list(self.saes), "dtype": self.dtype,
            "refusal_tokens": list(self.refusal_tokens or ()), "refusal_threshold": self.refusal_threshold,
            "refusal_phrases": str(self.refusal_phrases or ""), "holdout_fraction": self.holdout_fraction, "seed": self.seed,
        }


def gather_prompts(config: CacheConfig) -> list[Prompt]:
    """Harmful then harmless prompts, each split into train/val."""
    if (config.harmful is None) != (config.harmless is None):
        raise InputError("give both --harmful and --harmless, or neither (for the built-in demo prompts)")
    if config.harmful is None:
        harmful, harmless = demo_prompts()
    else:
        harmful = load_prompts(config.harmful, label="harmful", column=config.harmful_column)
        harmless = load_prompts(config.harmless, label="harmless", column=config.harmless_column)
    limit = config.max_prompts
    chosen = harmful[:limit] + harmless[:limit]
    return split_prompts(chosen, holdout_fraction=config.holdout_fraction, seed=config.seed)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a result, recorded beside it."""
    import importlib.metadata as metadata

    versions = {"python": sys.version.split()[0]}
    for name in ("refusal-explorer", "torch", "transformers", "sae-lens", "h5py", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _logit_lens(decoder: torch.Tensor, unembed: torch.Tensor) -> dict[str, np.ndarray]:
    """Tokens each latent's decoder row promotes most and least ([d_sae, k] ids each) and by how
    much (the decoder row times the unembedding: the logit it adds per unit of activation)."""
    parts: dict[str, list[torch.Tensor]] = {"top": [], "top_value": [], "bottom": [], "bottom_value": []}
    for rows in decoder.split(1024):
        logits = rows.to(unembed) @ unembed.T  # [chunk, vocab]
        top, bottom = logits.topk(LOGIT_LENS_TOKENS, dim=-1), (-logits).topk(LOGIT_LENS_TOKENS, dim=-1)
        parts["top"].append(top.indices)
        parts["top_value"].append(top.values)
        parts["bottom"].append(bottom.indices)
        parts["bottom_value"].append(-bottom.values)
    # numpy has no bfloat16: a bf16 model's values become float32 on the torch side
    return {
        f"logit_lens_{name}": torch.cat(chunks).cpu().to(torch.float32 if name.endswith("value") else torch.int32).numpy()
        for name, chunks in parts.items()
    }


def check_output(config: CacheConfig) -> None:
    """The output path fits the request: new, or resumed, or overwritten; never a directory; in
    a directory this user can write."""
    if config.out.exists() and config.out.is_dir():
        raise InputError(f"{config.out} is a directory; --out needs a file path such as study.h5")
    if config.out.exists() and not (config.resume or config.overwrite):
        raise InputError(f"{config.out} already exists; pass --resume to continue it or --overwrite to replace it")
    if config.resume and not config.out.exists():
        raise InputError(f"{config.out} does not exist; nothing to resume (drop --resume to start it)")
    parent = _existing_parent(config.out)
    if not _writable(parent):
        raise InputError(f"cannot write in {parent} (permission denied); choose another --out")


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def check_output_before_load(config: CacheConfig, prompts_digest: str, shard_identity: dict[str, Any]) -> bool:
    """Everything about ``--out`` that can refuse the run, read-only, before the model loads (the
    caller holds the study's lock): True when a resumed study is already complete."""
    check_output(config)
    if config.resume:
        identity = config.identity(prompts_digest, "", "") | shard_identity
        return check_resumable(config.out, identity, skip=("model", "model_revision"))
    if config.overwrite and config.out.exists():
        require_study_file(config.out, "overwrite")
    return False


def check_prompt_lengths(prompts: Sequence[Prompt], loaded: LoadedModel, config: CacheConfig) -> list[list[int]]:
    """Token ids of every prompt, or a one-line refusal of the first one over the limit."""
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    limit = config.max_prompt_tokens
    why = "--max-prompt-tokens"
    if limit is None and context:
        limit, why = int(context) - config.generate, f"the model's {int(context):,}-token context minus --generate {config.generate}"
    ids = [loaded.adapter.encode(loaded.tokenizer, prompt.text) for prompt in prompts]
    for prompt, tokens in zip(prompts, ids):
        if limit is not None and len(tokens) > limit:
            shown = prompt.text[:40].replace("\n", " ") + ("…" if len(prompt.text) > 40 else "")
            raise InputError(
                f"a {prompt.label} prompt ({shown!r}) has {len(tokens):,} tokens with the chat template, over the limit of "
                f"{limit:,} ({why}); shorten or drop it, or set --max-prompt-tokens"
            )
    return ids


def shard_bounds(n_prompts: int, batch_size: int, index: int, count: int) -> tuple[int, int]:
    """Prompts ``[start, stop)`` of shard ``index`` of ``count``: whole batches, spread evenly
    (a shard may be empty when there are fewer batches than shards)."""
    if not 0 <= index < count or batch_size < 1:
        raise ValueError(f"bad shard {index} of {count} with batch size {batch_size}")
    n_batches = -(-n_prompts // batch_size)
    first, last = index * n_batches // count, (index + 1) * n_batches // count
    return min(first * batch_size, n_prompts), min(last * batch_size, n_prompts)


def run_cache(
    config: CacheConfig, *, loaded: LoadedModel | None = None, progress: bool = True, shard: tuple[int, int] | None = None,
) -> Path:
    """Build (or resume) the study file; returns its path. ``loaded`` reuses a model in memory.

    ``shard=(index, count)`` caches only that shard's batch-aligned slice of the prompts into
    ``config.out`` and leaves it unfinalized, for ``store.merge.merge_shards`` (see
    ``cache.distributed``)."""
    from cache import sae as sae_lib

    prompts = gather_prompts(config)
    digest = prompt_set_digest(prompts)  # of the whole set: every shard records the same
    shard_identity = {}
    if shard is not None:
        from store.merge import SHARD_KEY

        start, stop = shard_bounds(len(prompts), config.batch_size, *shard)
        shard_identity = {SHARD_KEY: {"index": shard[0], "count": shard[1], "start": start, "stop": stop, "total": len(prompts)}}
        prompts = prompts[start:stop]
    check_output(config)
    specs = sae_lib.parse_sae_specs(config.saes)
    try:
        config.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the directory {config.out.parent} ({error.strerror}); choose another --out") from error
    # One writer per study, from before the model loads until the file is closed (store.lock).
    with study_lock(config.out, "cache"):
        if check_output_before_load(config, digest, shard_identity):
            return config.out  # a resumed study that is already complete: nothing to load
        return _run_locked(config, prompts, specs, digest, shard_identity, loaded, progress, shard)


def _run_locked(
    config: CacheConfig, prompts: list[Prompt], specs: list, digest: str, shard_identity: dict[str, Any],
    loaded: LoadedModel | None, progress: bool, shard: tuple[int, int] | None,
) -> Path:
    from cache import sae as sae_lib

    loaded = loaded or load_model(config.model, device=config.device, dtype=config.dtype)
    model, tokenizer, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    depth, d_model = n_layers(model), int(model.config.hidden_size)
    bad = [layer for layer in config.layers if layer >= depth]
    if bad:
        raise InputError(f"layer {bad[0]} is out of range: {loaded.model_id} has {depth} layers (0-{depth - 1})")
    resolved = [sae_lib.resolve_spec(spec, d_model=d_model, n_layers=depth) for spec in specs]
    missing = sorted({spec.layer for spec in resolved} - set(config.layers))
    if missing:
        raise InputError(f"an SAE is given for layer {missing[0]}, which is not among --layers {list(config.layers)}")
    check_prompt_lengths(prompts, loaded, config)
    saes = sae_lib.load_saes(resolved, device=model.device, dtype="float32", d_model=d_model, n_layers=depth)
    refusal_ids = adapter.refusal_token_ids(tokenizer, config.refusal_tokens)
    detector = RefusalDetector.from_file(config.refusal_phrases) if config.refusal_phrases else RefusalDetector()
    n_positions = adapter.n_post_instruction(tokenizer)
    unembed = model.get_output_embeddings().weight.detach()
    sae_arrays = {}
    for layer, sae in saes.items():
        decoder = sae_lib.decoder_rows(sae)
        sae_arrays[layer] = {"decoder_norm": decoder.norm(dim=-1).float().cpu().numpy(), **_logit_lens(decoder, unembed)}
    spec = StudySpec(
        model_id=loaded.model_id, model_revision=loaded.revision, layers=tuple(config.layers), d_model=d_model,
        resid_rows=config.positions, n_positions=n_positions,
        vocab=token_display_strings(tokenizer, int(model.config.vocab_size)),
        sae_layers={layer: int(sae.cfg.d_sae) for layer, sae in saes.items()},
        sae_info={spec.layer: sae_lib.describe_sae(saes[spec.layer], spec) for spec in resolved},
        sae_arrays=sae_arrays,
        identity=config.identity(digest, loaded.model_id, loaded.revision) | shard_identity,
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        refusal_threshold=config.refusal_threshold, versions=package_versions(),
    )
    writer = StudyWriter.resume(config.out, spec) if config.resume else StudyWriter.create(config.out, spec, overwrite=config.overwrite)
    with writer:
        if writer.complete:
            return config.out
        pad_id = pad_token_id(tokenizer)
        with tqdm(total=len(prompts), initial=writer.n_committed, unit="prompt", desc="caching", disable=not progress) as bar:
            for start in range(writer.n_committed, len(prompts), config.batch_size):
                chunk = prompts[start : start + config.batch_size]
                writer.append(_cache_batch(chunk, loaded, saes, config, refusal_ids, detector, n_positions, pad_id))
                bar.update(len(chunk))
        if shard is None:  # shards are indexed once, after the merge
            writer.finalize()
    return config.out


def _cache_batch(
    prompts: Sequence[Prompt], loaded: LoadedModel, saes: dict, config: CacheConfig, refusal_ids: list[int],
    detector: RefusalDetector, n_positions: int, pad_id: int,
) -> PromptBatch:
    from cache import sae as sae_lib

    token_ids = [loaded.adapter.encode(loaded.tokenizer, prompt.text) for prompt in prompts]
    resid, score = forward_with_residuals(loaded.model, token_ids, config.layers, refusal_ids, pad_id)
    width = max(len(ids) for ids in token_ids)
    # real tokens of row i are its last len_i columns (left padding)
    real = torch.cat([torch.arange(width - len(ids), width) + row * width for row, ids in enumerate(token_ids)])
    resid_rows, codes = {}, {}
    for layer in config.layers:
        flat = resid[layer].reshape(-1, resid[layer].shape[-1])
        if config.positions == RESID_ROWS_POST_INSTRUCTION:
            resid_rows[layer] = resid[layer][:, -n_positions:].reshape(-1, flat.shape[-1]).half().cpu().numpy()
        else:
            resid_rows[layer] = flat[real].half().cpu().numpy()
        if layer in saes:
            with torch.no_grad():
                codes[layer] = sae_lib.codes_to_csr(sae_lib.encode(saes[layer], flat[real].float()))
    if config.generate:
        generations = greedy_generate(loaded.model, loaded.tokenizer, token_ids, config.generate)
        refused = np.array([detector.is_refusal(text) for text in generations], np.int8)
    else:
        generations, refused = [""] * len(prompts), np.full(len(prompts), -1, np.int8)
    return PromptBatch(
        text=[p.text for p in prompts], label=[p.label for p in prompts], dataset=[p.dataset for p in prompts],
        split=[p.split for p in prompts], category=[p.category for p in prompts], generation=generations,
        token_ids=[np.asarray(ids, np.int32) for ids in token_ids], refusal_score=score.float().cpu().numpy(),
        refused=refused, resid=resid_rows, codes=codes,
    )

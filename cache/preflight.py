"""Pre-flight check of a cache run: will it load, fit and finish, before any weight is read?

It resolves the model and every SAE in the local Hugging Face cache (huggingface_hub's
``try_to_load_from_cache``; SAE files through sae-lens's registry: release → repo id + folder),
reads sizes from config and safetensors headers only, and estimates GPU memory (weights + SAEs
+ one batch of activations) against the free memory of the target GPU, and the study file's
size against the free disk. Every problem becomes one line of a ``PreflightError``; on success
``PreflightReport.table()`` is a short table of the estimates.

The estimates are deliberately rough upper bounds (token counts from characters, attention as
if eager, a fixed allowance for the CUDA context); they are labelled as estimates wherever shown.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache.pipeline import CacheConfig, check_output, gather_prompts
from cache.presets import PRESETS, GIB, gpu_memory, resolve_device_name
from store.errors import InputError
from store.schema import RESID_ROWS_POST_INSTRUCTION

CHARS_PER_TOKEN = 3.5
"""English text runs ~4 characters per token in these vocabularies; 3.5 errs on the large side."""
TEMPLATE_TOKENS = 12
"""Chat-template tokens around each instruction (BOS, turn markers, the assistant header)."""
POST_INSTRUCTION_TOKENS = 6
"""Post-instruction positions assumed for the disk estimate (5 for Gemma 2 and Llama 3)."""
DEFAULT_L0 = 100
"""Active latents per token assumed when the SAE's id and registry entry do not say."""
CUDA_OVERHEAD = 1 * GIB
"""CUDA context, cuBLAS workspace and allocator fragmentation."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                      "F8_E4M3": 1, "F8_E5M2": 1}
# Model families whose weights the hub gates behind a licence (a missing one needs a login first).
_GATED_PREFIXES = ("meta-llama/", "google/gemma-2", "google/gemma-3", "google/gemma-7b", "google/gemma-2b", "mistralai/")
# Files sae-lens's loader for each registry conversion reads, relative to the SAE's folder.
_SAE_FILES = {
    "sae_lens": ("cfg.json", "sae_weights.safetensors"),
    "gemma_2": ("params.npz",),
    "llama_scope": ("hyperparams.json", "checkpoints/final.safetensors"),
}


class PreflightError(InputError):
    """One line per problem found by the pre-flight check."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, kw_only=True)
class ModelFacts:
    """What the config and the weight files' headers say about the model."""

    name: str
    where: str
    """Where it was found: the HF cache, a local directory, the embedded default."""
    n_params: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    """config.json (the text config of a multimodal model)."""

    def get(self, key: str, default: int | None = None) -> int | None:
        value = self.config.get(key, default)
        return int(value) if isinstance(value, (int, float)) else default


@dataclass(frozen=True, kw_only=True)
class SAEFacts:
    label: str
    layer: int | None
    d_in: int | None
    d_sae: int | None
    l0: int
    """Active latents per token, for the disk estimate."""
    where: str


@dataclass(frozen=True, kw_only=True)
class PreflightReport:
    """The estimates of one run (all sizes in bytes)."""

    model: ModelFacts
    saes: tuple[SAEFacts, ...]
    n_prompts: int
    n_tokens: int
    """Estimated tokens of all prompts with their chat template."""
    max_tokens: int
    """Estimated tokens of the longest prompt."""
    batch_size: int
    device: str
    memory: dict[str, int]
    """weights, saes, activations, overhead, total."""
    gpu_free: int | None
    study_bytes: int
    disk_needed: int
    disk_free: int
    disk_dir: Path

    def table(self) -> str:
        m = self.model
        params = f"{self.model.n_params / 1e9:.2f} B params" if m.n_params else "size unknown"
        shape = f", {m.get('num_hidden_layers')} layers, d_model {m.get('hidden_size')}" if m.config else ""
        mem = self.memory
        where = f"{_gib(self.gpu_free)} free on {self.device}" if self.gpu_free is not None else f"on {self.device} (RAM)"
        rows = [
            ("model", f"{m.name}  [{m.where}]  {params}{shape}"),
            *[("SAE", f"layer {s.layer}: {s.label}  {s.d_sae or '?'} latents, L0≈{s.l0}  [{s.where}]") for s in self.saes],
            ("prompts", f"{self.n_prompts} (≈{self.n_tokens:,} tokens, longest ≈{self.max_tokens}), batch {self.batch_size}"),
            ("memory", f"≈{_gib(mem['total'])} = weights {_gib(mem['weights'])} + SAEs {_gib(mem['saes'])}"
                       f" + activations {_gib(mem['activations'])} + overhead {_gib(mem['overhead'])}; {where}"),
            ("disk", f"≈{_gib(self.study_bytes)} study file (needs ≈{_gib(self.disk_needed)} while writing); "
                     f"{_gib(self.disk_free)} free in {self.disk_dir}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(["preflight (estimates, nothing loaded yet)"] + [f"  {name:<{width}}  {text}" for name, text in rows])


def _gib(value: int | None) -> str:
    if value is None:
        return "?"
    return f"{value / GIB:.1f} GiB" if value >= GIB / 10 else f"{value / (1 << 20):.0f} MiB"


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def safetensors_numel(path: Path) -> int:
    """Parameters in a safetensors file, from its JSON header alone."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")


def _hf_cached(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def _hf_cache_dir() -> str:
    import huggingface_hub.constants as constants

    return str(constants.HF_HUB_CACHE)


def is_gated(model_id: str) -> bool:
    if any(preset.model_id == model_id and preset.gated for preset in PRESETS.values()):
        return True
    return model_id.startswith(_GATED_PREFIXES) and "scope" not in model_id


def _download(model_id: str) -> str:
    # Meta's repos also hold the original consolidated checkpoint, as large as the model again.
    return f"hf download {model_id}" + (' --exclude "original/*"' if model_id.startswith("meta-llama/") else "")


def _missing_model(model_id: str) -> str:
    where = f"not in the local Hugging Face cache ({_hf_cache_dir()})"
    if is_gated(model_id):
        return (f"model {model_id} is {where}; it is gated: accept its licence on https://huggingface.co/{model_id}, "
                f"run `hf auth login`, then `{_download(model_id)}`")
    return f"model {model_id} is {where}; download it with `{_download(model_id)}` (or give a local directory)"


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config") or config


def _weights_params(files: Sequence[Path]) -> int | None:
    tensors = [path for path in files if path.suffix == ".safetensors"]
    try:
        return sum(safetensors_numel(path) for path in tensors) if tensors else None
    except (OSError, ValueError, KeyError, struct.error):
        return None


def _hf_model(model_id: str, problems: list[str]) -> ModelFacts:
    config_path = _hf_cached(model_id, "config.json")
    if config_path is None:
        problems.append(_missing_model(model_id))
        return ModelFacts(name=model_id, where="missing")
    index_path = _hf_cached(model_id, "model.safetensors.index.json")
    if index_path is not None:
        names = sorted(set(json.loads(index_path.read_text()).get("weight_map", {}).values()))
    else:
        names = ["model.safetensors"]
    found = {name: _hf_cached(model_id, name) for name in names}
    if index_path is None and found["model.safetensors"] is None:
        legacy = _hf_cached(model_id, "pytorch_model.bin")  # older checkpoints
        if legacy is not None:
            found = {"pytorch_model.bin": legacy}
    missing = [name for name, path in found.items() if path is None]
    if _hf_cached(model_id, "tokenizer_config.json") is None:
        missing.append("tokenizer_config.json")
    if missing:
        problems.append(f"model {model_id} is only partly in the local Hugging Face cache (missing {', '.join(missing)}); "
                        f"finish it with `{_download(model_id)}`")
    config = _text_config(json.loads(config_path.read_text()))
    params = _weights_params([path for path in found.values() if path is not None]) if not missing else None
    return ModelFacts(name=model_id, where="HF cache", n_params=params, config=config)


def _local_model(path: Path, name: str, where: str, problems: list[str]) -> ModelFacts:
    config_path = path / "config.json"
    if not config_path.is_file():
        problems.append(f"model directory {path} has no config.json (not a Hugging Face checkpoint?)")
        return ModelFacts(name=name, where=where)
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not weights:
        problems.append(f"model directory {path} has no weights (*.safetensors or *.bin)")
    config = _text_config(json.loads(config_path.read_text()))
    return ModelFacts(name=name, where=where, n_params=_weights_params(weights), config=config)


def check_model(name: str, problems: list[str]) -> ModelFacts:
    """Facts about the model ``name`` (as ``cache.models.load_model`` resolves it); problems
    are appended to ``problems``."""
    from cache import default_model

    spec = default_model.embedded_model(name)
    if spec is not None:
        model_dir = default_model.model_dir(spec)
        if default_model.is_complete(model_dir, spec):
            return _local_model(model_dir, spec.model_id, "embedded", problems)
        try:
            default_model.locate_parts(spec)
        except InputError as error:
            problems.append(str(error))
        return ModelFacts(name=spec.model_id, where=f"embedded, set up on first use ({spec.setup_cost})")
    local = Path(name).expanduser()
    if local.is_dir():
        return _local_model(local, name, "local directory", problems)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        problems.append(f"unknown model {name!r}: not 'default' or 'qwen-1.5b', not a local directory, not a Hugging Face id (org/name)")
        return ModelFacts(name=name, where="missing")
    return _hf_model(name, problems)


# ---------------------------------------------------------------------------------------------
# SAEs
# ---------------------------------------------------------------------------------------------


def _l0_of(folder: str, expected: float | None) -> int:
    match = re.search(r"average_l0_(\d+)", folder)
    if match:
        return int(match.group(1))
    return int(expected) if expected and expected > 0 else DEFAULT_L0


def _sae_files(release: str, sae_id: str) -> tuple[str, str, tuple[str, ...] | None, int]:
    """(repo id, folder, files sae-lens reads or None when unknown, L0) of a registry SAE."""
    from cache.sae import _registry

    directory = _registry()
    if release not in directory:  # a HF repo in sae-lens's own format
        return release, sae_id, tuple(f"{sae_id}/{name}" for name in _SAE_FILES["sae_lens"]), DEFAULT_L0
    entry = directory[release]
    folder = entry.saes_map[sae_id]
    names = _SAE_FILES.get(entry.conversion_func or "sae_lens")
    expected = (entry.expected_l0 or {}).get(sae_id)
    return entry.repo_id, folder, None if names is None else tuple(f"{folder}/{name}" for name in names), _l0_of(folder, expected)


def check_saes(specs: Sequence[str], model: ModelFacts, layers: Sequence[int], problems: list[str]) -> tuple[SAEFacts, ...]:
    """Resolve each SAE spec without reading weights; problems are appended to ``problems``."""
    from cache import sae as sae_lib
    from cache.sae_info import sae_provenance

    try:
        parsed = sae_lib.parse_sae_specs(specs)
    except InputError as error:
        problems.append(str(error))
        return ()
    d_model, depth = model.get("hidden_size"), model.get("num_hidden_layers")
    facts = []
    for spec in parsed:
        where, l0 = ("packaged" if sae_provenance(spec.path).get("source") == "packaged" else "local directory"), DEFAULT_L0
        try:
            if not spec.is_local:
                sae_lib.check_registry_spec(spec)
                repo_id, _, files, l0 = _sae_files(spec.release, spec.sae_id)
                missing = [name for name in files or () if _hf_cached(repo_id, name) is None]
                if missing:
                    problems.append(f"SAE {spec.label} is not in the local Hugging Face cache; download it with "
                                    f"`hf download {repo_id} {' '.join(missing)}`")
                    facts.append(SAEFacts(label=spec.label, layer=spec.layer, d_in=None, d_sae=None, l0=l0, where="missing"))
                    continue
                where = "HF cache" if files else "HF cache (files not checked)"
            cfg = sae_lib.read_sae_config(spec)
            resolved = sae_lib.check_sae_config(spec, cfg, d_model=d_model, n_layers=depth)
        except InputError as error:
            problems.append(str(error))
            continue
        if resolved.layer not in layers:
            problems.append(f"an SAE is given for layer {resolved.layer}, which is not among --layers {list(layers)}")
        facts.append(SAEFacts(label=spec.label, layer=resolved.layer, d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), l0=l0, where=where))
    return tuple(facts)


# ---------------------------------------------------------------------------------------------
# Estimates
# ---------------------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Tokens of one prompt with its chat template (an over-estimate for English)."""
    return math.ceil(len(text.encode("utf-8")) / CHARS_PER_TOKEN) + TEMPLATE_TOKENS


def estimate_memory(model: ModelFacts, saes: Sequence[SAEFacts], *, batch: int, max_tokens: int, generate: int,
                    n_layers_cached: int, dtype_bytes: int, on_gpu: bool) -> dict[str, int]:
    """Peak device memory of a cache run, in bytes, by part."""
    d_model = model.get("hidden_size", 0) or 0
    heads = model.get("num_attention_heads", 1) or 1
    kv_heads = model.get("num_key_value_heads", heads) or heads
    head_dim = model.get("head_dim") or (d_model // heads if heads else 0)
    inter = model.get("intermediate_size", 4 * d_model) or 0
    vocab = model.get("vocab_size", 0) or 0
    depth = model.get("num_hidden_layers", 0) or 0
    seq = max_tokens + generate
    weights = (model.n_params or 0) * dtype_bytes
    sae_bytes = sum(4 * (2 * s.d_in * s.d_sae + 2 * s.d_sae + s.d_in) for s in saes if s.d_in and s.d_sae)
    forward = batch * seq * dtype_bytes * (d_model * (n_layers_cached + 6) + 3 * inter)  # kept residuals + working set
    attention = 2 * batch * heads * seq * seq * 4  # eager scores and probabilities in float32
    kv_cache = 2 * depth * batch * seq * kv_heads * head_dim * dtype_bytes if generate else 0
    logits = 2 * batch * vocab * 4
    encode = max((3 * batch * seq * s.d_sae * 4 for s in saes if s.d_sae), default=0)  # pre-acts, codes, mask
    logit_lens = max((2 * 1024 * vocab * dtype_bytes + s.d_sae * d_model * dtype_bytes for s in saes if s.d_sae), default=0)
    activations = max(forward + attention + kv_cache + logits + encode, logit_lens)
    overhead = CUDA_OVERHEAD if on_gpu else 0
    return {"weights": weights, "saes": sae_bytes, "activations": activations, "overhead": overhead,
            "total": weights + sae_bytes + activations + overhead}


def estimate_study_bytes(model: ModelFacts, saes: Sequence[SAEFacts], *, texts: Sequence[str], n_tokens: int,
                         n_layers_cached: int, positions: str, generate: int) -> int:
    """Size of the finished study file, in bytes (before compression, which gains little on it)."""
    d_model = model.get("hidden_size", 0) or 0
    vocab = model.get("vocab_size", 0) or 0
    n_prompts = len(texts)
    rows = n_prompts * POST_INSTRUCTION_TOKENS if positions == RESID_ROWS_POST_INSTRUCTION else n_tokens
    resid = rows * d_model * 2 * n_layers_cached
    # CSR (int32 index + f16 value) and the per-latent copy (int64 row + f16 value), plus indptr
    codes = sum(n_tokens * (s.l0 * (4 + 2 + 8 + 2) + 8) for s in saes)
    per_latent = sum((s.d_sae or 0) * (4 + 2 * 8 * 4 + 6 * 4) for s in saes)  # norms, logit lens, statistics
    prompts = sum(len(text.encode("utf-8")) for text in texts) + n_prompts * (64 + 4 * generate) + 4 * n_tokens
    return resid + codes + per_latent + prompts + vocab * 16 + (1 << 20)


def available_ram() -> int | None:
    """Memory the kernel says a new process can use without swapping (MemAvailable), in bytes."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path if path.is_dir() else path.parent


def run_preflight(
    config: CacheConfig, *, n_shards: int = 1, device: str | None = None,
    gpu: Callable[[str], tuple[int, int] | None] = gpu_memory, disk_free: Callable[[Path], int] | None = None,
    ram: Callable[[], int | None] | None = None,
) -> PreflightReport:
    """Check ``config`` before heavy work; raise ``PreflightError`` (one line per problem).

    ``n_shards`` > 1: the run writes shard files and then a merged copy, so it needs twice the
    disk. ``device`` overrides ``config.device`` (a rank's own GPU); ``gpu`` and ``disk_free``
    are the probes (replaceable in tests).
    """
    prompts = gather_prompts(config)  # bad prompt files and outputs fail alone, as in run_cache
    check_output(config)
    problems: list[str] = []
    model = check_model(config.model, problems)
    depth = model.get("num_hidden_layers")
    if depth is not None:
        bad = [layer for layer in config.layers if layer >= depth]
        if bad:
            problems.append(f"layer {bad[0]} is out of range: {model.name} has {depth} layers (0-{depth - 1})")
    saes = check_saes(config.saes, model, config.layers, problems)

    device_name = resolve_device_name(device or config.device)
    gpu_info = gpu(device_name) if device_name.startswith("cuda") else None
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device_name.startswith("cuda") else "float32")
    texts = [prompt.text for prompt in prompts]
    lengths = [estimate_tokens(text) for text in texts]
    n_tokens, max_tokens = sum(lengths), max(lengths, default=0)

    def memory_at(batch: int) -> dict[str, int]:
        return estimate_memory(model, saes, batch=batch, max_tokens=max_tokens, generate=config.generate,
                               n_layers_cached=len(config.layers), dtype_bytes=DTYPE_BYTES.get(dtype, 4), on_gpu=gpu_info is not None)

    memory = memory_at(config.batch_size)
    if gpu_info is not None and model.n_params and memory["total"] > gpu_info[0]:
        fitting = [b for b in (64, 32, 16, 8, 4, 2, 1) if b < config.batch_size and memory_at(b)["total"] <= gpu_info[0]]
        advice = f"try --batch-size {fitting[0]}" if fitting else "the weights and SAEs alone do not fit: use a larger GPU or fewer SAE layers"
        problems.append(f"estimated GPU memory ≈{_gib(memory['total'])} (batch {config.batch_size}) exceeds the "
                        f"{_gib(gpu_info[0])} free on {device_name}; {advice}")
    available = (ram or available_ram)() if gpu_info is None else None
    if available is not None and model.n_params and memory["total"] > available:
        fitting = [b for b in (64, 32, 16, 8, 4, 2, 1) if b < config.batch_size and memory_at(b)["total"] <= available]
        advice = (f"try --batch-size {fitting[0]}" if fitting else
                  f"the longest prompt (≈{max_tokens:,} tokens) alone does not fit: shorten it or set --max-prompt-tokens"
                  if memory_at(1)["activations"] > memory["weights"] else "the model does not fit in this machine's memory")
        problems.append(f"estimated RAM ≈{_gib(memory['total'])} (batch {config.batch_size}, longest prompt ≈{max_tokens:,} tokens) "
                        f"exceeds the {_gib(available)} available on {device_name}; {advice}")

    study = estimate_study_bytes(model, saes, texts=texts, n_tokens=n_tokens, n_layers_cached=len(config.layers),
                                 positions=config.positions, generate=config.generate)
    needed = int(study * (2 if n_shards > 1 else 1) * 1.1)
    disk_dir = _existing_parent(Path(config.out))
    free = (disk_free or (lambda path: shutil.disk_usage(path).free))(disk_dir)
    if needed > free:
        problems.append(f"the study needs ≈{_gib(needed)} of disk (estimate) but only {_gib(free)} is free in {disk_dir}; "
                        "free some space or choose another --out")
    if problems:
        raise PreflightError(problems)
    return PreflightReport(
        model=model, saes=saes, n_prompts=len(prompts), n_tokens=n_tokens, max_tokens=max_tokens,
        batch_size=config.batch_size, device=device_name, memory=memory,
        gpu_free=None if gpu_info is None else gpu_info[0], study_bytes=study, disk_needed=needed, disk_free=free,
        disk_dir=disk_dir,
    )


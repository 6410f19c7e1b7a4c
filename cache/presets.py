"""Presets for the papers' setups: a model id plus everything that must match it.

``--preset gemma-2-2b-it`` and ``--preset llama-3.1-8b-it`` fill in the model, the refusal
token, the layers (the papers' key layer plus a sweep for direction finding), one residual SAE
per key layer (Gemma Scope / Llama Scope, trained on the base models and applied to the -IT
models as in the papers), bf16 on a GPU, and a batch size for the detected GPU's memory.
Any option given explicitly on the command line wins over the preset's value.

Chat templates come from the real tokenizers (Gemma's has no system turn; Llama 3.1's adds its
default system header); a checkpoint without a template gets the family adapter's
(``cache.adapters``), which is what the tiny offline stand-ins exercise.

Layer L is the residual stream after decoder block L (Gemma Scope ``layer_L``, Llama Scope
``lLr``); the sweep stays below the last ~20% of layers, where Arditi et al. found that
directions chosen there do not generalise.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from store.errors import InputError

GIB = 1 << 30
#: ``--model default`` / ``--sae L=default``: the embedded model and its packaged SAEs.
PACKAGED = "default"
#: The opt-in embedded Qwen2.5-Coder-1.5B-Instruct (extra ``stronger``); no packaged SAEs.
QWEN_1_5B = "qwen-1.5b"
#: ``--model NAME`` of these is their preset, as if ``--preset NAME`` were given.
EMBEDDED_PRESETS = (PACKAGED, QWEN_1_5B)


@dataclass(frozen=True, kw_only=True)
class SAEChoice:
    """One SAE family of a preset, e.g. Gemma Scope 16k canonical."""

    release: str
    """sae-lens registry release, or ``default`` for the SAEs packaged with the project."""
    id_template: str = ""
    """The SAE id of layer L: ``id_template.format(layer=L)`` (unused for ``default``)."""

    def spec(self, layer: int) -> str:
        """The ``--sae`` spec of this SAE at ``layer``: ``LAYER=RELEASE:SAE_ID`` or ``LAYER=default``."""
        if self.release == PACKAGED:
            return f"{layer}={PACKAGED}"
        return f"{layer}={self.release}:{self.id_template.format(layer=layer)}"


@dataclass(frozen=True, kw_only=True)
class Preset:
    """Everything a paper setup fixes; see the module docstring."""

    name: str
    """The ``--preset`` value."""
    model_id: str
    """Hugging Face id of the chat model (must already be in the local HF cache)."""
    family: str
    """transformers ``model_type``; picks the adapter (chat template fallback, hook points)."""
    n_layers: int
    """Decoder blocks of the model, to check layer choices before anything loads."""
    gated: bool
    """The hub asks users to accept a licence before downloading the weights."""
    refusal_tokens: tuple[str, ...]
    """First response tokens counted by the fast refusal score."""
    key_layers: tuple[int, ...]
    """The papers' key layers: they get SAE codes by default."""
    sweep_layers: tuple[int, ...]
    """Layers whose residuals are cached for choosing the refusal direction."""
    sae_widths: Mapping[str, SAEChoice]
    """``--sae-width`` value → SAE family; empty when the preset ships no SAEs."""
    default_width: str
    """The width used without ``--sae-width`` ("" when there are no SAEs)."""
    gpu_dtype: str = "bfloat16"
    """Weights dtype on a GPU."""
    cpu_bf16: bool = False
    """On a CPU with native bf16 matmuls (AVX512-BF16 or AMX), run in bfloat16: measured 1.45x
    faster than float32 for the 1.5B model (bench/bench_embedded.py dtype; float16 was 0.41x).
    Elsewhere float32, where bf16 matmuls are emulated and slow."""
    batch_sizes: tuple[tuple[float, int], ...]
    """(minimum total GPU memory in GiB, batch size), ascending; the largest tier that fits wins."""
    cpu_batch_size: int = 4
    """Batch size without a GPU when the free RAM is unknown."""
    cpu_batch_sizes: tuple[tuple[float, int], ...] = ()
    """(minimum available RAM in GiB before the model loads, batch size), ascending, like
    ``batch_sizes``; below the first tier (or without tiers) ``cpu_batch_size``."""
    sae_layers_available: tuple[int, ...] | None = None
    """Layers that have an SAE of this preset; None = every layer (Gemma Scope, Llama Scope)."""

    def __post_init__(self) -> None:
        if self.sae_widths and self.default_width not in self.sae_widths:
            raise ValueError(f"preset {self.name}: default width {self.default_width!r} is not among its widths")
        if not set(self.key_layers) <= set(self.layers):
            raise ValueError(f"preset {self.name}: key layers must be among its layers")
        if max(self.layers) >= self.n_layers:
            raise ValueError(f"preset {self.name}: a layer is out of range")
        for tiers in (self.batch_sizes, self.cpu_batch_sizes):
            if [tier for tier, _ in tiers] != sorted(tier for tier, _ in tiers):
                raise ValueError(f"preset {self.name}: batch size tiers must ascend")

    @property
    def layers(self) -> tuple[int, ...]:
        """Default layers: the sweep and the key layers, ascending."""
        return tuple(sorted(set(self.sweep_layers) | set(self.key_layers)))

    def batch_size_for(self, gpu_total_bytes: int | None, cpu_available_bytes: int | None = None) -> int:
        """The batch size for a GPU with this much memory in total (None = CPU, where the RAM
        available before the model loads picks the tier, when known)."""
        if gpu_total_bytes is None:
            fitting = [batch for tier, batch in self.cpu_batch_sizes
                       if cpu_available_bytes is not None and cpu_available_bytes >= tier * GIB]
            return fitting[-1] if fitting else self.cpu_batch_size
        # "24 GB" cards report a little less than 24 GiB (and part of it is reserved): 10% slack.
        fitting = [batch for tier, batch in self.batch_sizes if gpu_total_bytes >= 0.9 * tier * GIB]
        return fitting[-1] if fitting else self.batch_sizes[0][1]

    def sae_specs(self, layers: tuple[int, ...], width: str | None = None) -> tuple[str, ...]:
        """``LAYER=RELEASE:SAE_ID`` for each layer, in the chosen width."""
        width = width or self.default_width
        if not self.sae_widths:
            if layers:
                raise InputError(
                    f"preset {self.name} ships no SAEs; train one (refusal-explorer train-sae --model {self.model_id}) "
                    "and pass --sae LAYER=DIR")
            return ()
        if width not in self.sae_widths:
            raise InputError(f"--sae-width {width!r} is not offered by preset {self.name}; choose {', '.join(self.sae_widths)}")
        return tuple(self.sae_widths[width].spec(layer) for layer in layers)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            # The embedded Qwen2.5-Coder-0.5B-Instruct (cache.default_model) with the project's own
            # SAEs at layers 14 and 18 (cache/data/saes); the sweep is the demo's.
            name=PACKAGED, model_id=PACKAGED, family="qwen2", n_layers=24, gated=False,
            refusal_tokens=("I",), key_layers=(14, 18), sweep_layers=(12, 16),
            sae_widths={"2k": SAEChoice(release=PACKAGED)}, default_width="2k",
            sae_layers_available=(14, 18), gpu_dtype="float32",
            batch_sizes=((0, 8), (24, 32)), cpu_batch_size=8,
        ),
        Preset(
            # The opt-in embedded Qwen2.5-Coder-1.5B-Instruct (extra `stronger`): 28 layers, d_model
            # 1536. docs/DIRECTION.md found its best direction at layer 16 (of a 12-16 sweep); the
            # sweep stays below layer 22 (the last 20%). No SAEs ship for it: --sae LAYER=DIR.
            name=QWEN_1_5B, model_id=QWEN_1_5B, family="qwen2", n_layers=28, gated=False,
            refusal_tokens=("I",), key_layers=(16,), sweep_layers=(10, 12, 14, 18),
            sae_widths={}, default_width="", sae_layers_available=(),
            # 1.78 B parameters = 7.1 GB in float32 (3.6 GB in bf16); a batch of 8 prompts adds
            # well under 1 GB (logits of 152k tokens at the last positions dominate).
            batch_sizes=((0, 8), (24, 32), (40, 64)),
            cpu_batch_size=2, cpu_batch_sizes=((10, 4), (14, 8)), cpu_bf16=True,
        ),
        Preset(
            name="gemma-2-2b-it", model_id="google/gemma-2-2b-it", family="gemma2", n_layers=26, gated=True,
            refusal_tokens=("I",), key_layers=(16,), sweep_layers=tuple(range(2, 21, 2)),
            sae_widths={
                "16k": SAEChoice(release="gemma-scope-2b-pt-res-canonical", id_template="layer_{layer}/width_16k/canonical"),
                "65k": SAEChoice(release="gemma-scope-2b-pt-res-canonical", id_template="layer_{layer}/width_65k/canonical"),
            },
            default_width="16k",
            # 2.6 B parameters = 5.2 GB in bf16; the rest is activations (vocab 256k, d_model 2304)
            batch_sizes=((0, 8), (24, 32), (40, 64), (80, 128)),
        ),
        Preset(
            name="llama-3.1-8b-it", model_id="meta-llama/Llama-3.1-8B-Instruct", family="llama", n_layers=32, gated=True,
            refusal_tokens=("I",), key_layers=(13,), sweep_layers=tuple(range(2, 25, 2)),
            sae_widths={
                "32k": SAEChoice(release="llama_scope_lxr_8x", id_template="l{layer}r_8x"),
                "128k": SAEChoice(release="llama_scope_lxr_32x", id_template="l{layer}r_32x"),
            },
            default_width="32k",
            # 8.0 B parameters = 16.1 GB in bf16: a 24 GB card has ~6 GB left for the batch
            batch_sizes=((0, 2), (24, 8), (40, 32), (80, 64)),
            cpu_batch_size=2,
        ),
    )
}

#: The options a preset fills in (CacheConfig field names).
PRESET_FIELDS = ("model", "layers", "saes", "refusal_tokens", "dtype", "batch_size")


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown --preset {name!r}; choose {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve_device_name(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is present, else ``cpu``; anything else unchanged."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def gpu_memory(device: str) -> tuple[int, int] | None:
    """(free, total) bytes of the CUDA device ``device`` names, or None when it is not a GPU."""
    import torch

    name = resolve_device_name(device)
    if not name.startswith("cuda") or not torch.cuda.is_available():
        return None
    index = torch.device(name).index
    free, total = torch.cuda.mem_get_info(torch.cuda.current_device() if index is None else index)
    return int(free), int(total)


def apply_preset(
    name: str | None, options: Mapping[str, Any], explicit: Collection[str], *, sae_layers: tuple[int, ...] | None = None,
    sae_width: str | None = None, gpu_total_bytes: int | None = None, cpu_available_bytes: int | None = None,
) -> dict[str, Any]:
    """``options`` (CacheConfig keyword arguments) with the preset's values filled in.

    ``--model default`` without ``--preset`` is the ``default`` preset: the embedded model, the
    demo's layers and the packaged SAEs (``--sae-layers none`` turns those off).

    ``explicit`` names the options the user gave; those win over the preset. SAEs: ``--sae``
    replaces the preset's; otherwise ``sae_layers`` (default: the key layers among the layers
    in use, or every layer in use when the user picked layers without a key layer) get the
    preset's SAE of ``sae_width``. Only those SAEs are loaded. ``gpu_total_bytes`` (None = no
    GPU) picks the dtype and the batch size tier; on a CPU, ``cpu_available_bytes`` (RAM
    available now) picks the tier of presets that have CPU tiers.
    """
    if name is None and options.get("model") in EMBEDDED_PRESETS:
        name = options["model"]
    if name is None:
        if sae_layers is not None or sae_width is not None:
            raise InputError("--sae-layers and --sae-width pick a preset's SAEs; add --preset, or give --sae LAYER=RELEASE:SAE_ID")
        return dict(options)
    preset = get_preset(name)
    given = {key: options[key] for key in PRESET_FIELDS if key in explicit and key in options}
    if given.get("saes") and (sae_layers is not None or sae_width is not None):
        raise InputError("give either --sae or --sae-layers/--sae-width, not both")
    layers = tuple(given.get("layers") or preset.layers)
    if given.get("saes"):
        saes = tuple(given["saes"])
    else:
        if sae_layers is None:
            everywhere = layers if preset.sae_layers_available is None else ()
            chosen = tuple(layer for layer in preset.key_layers if layer in layers) or everywhere
            chosen = chosen if preset.sae_widths else ()  # a preset without SAEs attaches none
        else:
            chosen = sae_layers
            outside = [layer for layer in chosen if layer not in layers]
            if outside:
                raise InputError(f"--sae-layers {outside[0]} is not among the cached layers {list(layers)}; add it to --layers")
            preset.sae_specs(chosen if not preset.sae_widths else (), sae_width)  # no SAEs: one-line error
            available = preset.sae_layers_available
            missing = [layer for layer in chosen if available is not None and layer not in available]
            if missing:
                raise InputError(
                    f"--sae-layers {missing[0]}: preset {preset.name} has SAEs at layers {', '.join(map(str, available))} only"
                )
        saes = preset.sae_specs(chosen, sae_width)
    filled = {
        "model": preset.model_id, "layers": layers, "saes": saes, "refusal_tokens": preset.refusal_tokens,
        "dtype": preset.gpu_dtype if gpu_total_bytes is not None else (
            "bfloat16" if preset.cpu_bf16 and cpu_has_native_bf16() else "float32"),
        "batch_size": preset.batch_size_for(gpu_total_bytes, cpu_available_bytes),
    }
    return dict(options) | filled | {key: value for key, value in given.items() if key not in ("layers", "saes")}


def describe_presets() -> str:
    """One line per preset, for --help and the runbook."""
    return "; ".join(f"{p.name} ({p.model_id}, layers {p.key_layers[0]} + sweep)" for p in PRESETS.values() if p.name not in EMBEDDED_PRESETS)


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs whose flags list avx512_bf16 or amx_bf16 (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def cpu_available_memory() -> int | None:
    """Bytes of RAM available to a new process now (psutil, else /proc/meminfo), or None."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

"""SAE specs, loading through sae-lens, and the tensor helpers the cache/explorer stages use.

Conventions
-----------
* "Layer L" is the residual stream right after decoder block L: the output of
  ``model.model.layers[L]`` (TransformerLens ``blocks.L.hook_resid_post``). Gemma Scope
  ``layer_12/...`` and Llama Scope ``l13r_8x`` are SAEs of exactly that activation.
* A spec is either a registry entry ``RELEASE:SAE_ID`` (resolved by sae-lens's
  ``pretrained_saes.yaml``) or a local directory in sae-lens's on-disk format
  (``cfg.json`` + ``sae_weights.safetensors``, as written by ``SAE.save_model``). On the CLI a
  spec may carry its layer: ``--sae 12=RELEASE:SAE_ID`` or ``--sae 16=/path/to/dir``; without
  one the layer is read from the SAE's hook name.
* Loading validates cheaply first (registry lookup, config file, d_in, hook layer), then reads
  the weights and checks them for NaN/Inf. Every failure is an ``InputError`` with one line.

sae-lens is imported lazily: importing this module costs nothing.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cache.sae_info import sae_provenance
from store.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE

#: Architectures whose ``decode(encode(x))`` reconstructs ``x`` itself (so the error term
#: ``x - decode(encode(x))`` is meaningful). Transcoders and temporal SAEs are refused.
SUPPORTED_ARCHITECTURES = ("standard", "jumprelu", "topk", "gated", "abstopk")

#: sae-lens's on-disk format (``sae_lens.constants``); repeated here so that checking a
#: directory does not import sae-lens.
SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"

_LAYER_PREFIX = re.compile(r"^\s*(-?\d+)\s*=(.*)$")
_HOOK_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_HOOK_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_HF_LAYER_OUTPUT = re.compile(r"^(?:model\.)?layers\.(\d+)$")


def _one_line(text: object) -> str:
    """Collapse whitespace so an error message stays on one line."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SAESpec:
    """Where one SAE comes from, and (optionally) which layer it is applied to."""

    release: str | None = None
    """sae-lens registry release (``pretrained_saes.yaml`` key) or a HF repo id; None for a
    local directory."""
    sae_id: str | None = None
    """The SAE's id inside the release, e.g. ``layer_12/width_16k/canonical``."""
    path: str | None = None
    """A local directory in sae-lens's on-disk format; None for a registry SAE."""
    layer: int | None = None
    """The layer the SAE is applied to (output of decoder block ``layer``); None = infer it
    from the SAE's hook name."""

    def __post_init__(self) -> None:
        registry = self.release is not None or self.sae_id is not None
        if registry and self.path is not None:
            raise InputError(
                f"SAE spec {self}: give either RELEASE:SAE_ID or a directory, not both"
            )
        if registry and not (self.release and self.sae_id):
            raise InputError(
                f"SAE spec {self}: a registry SAE needs both a release and an id (RELEASE:SAE_ID)"
            )
        if not registry and not self.path:
            raise InputError("empty SAE spec: expected RELEASE:SAE_ID or a directory path")
        if self.layer is not None and (isinstance(self.layer, bool) or self.layer < 0):
            raise InputError(f"SAE spec {self}: the layer must be a non-negative integer")

    @property
    def is_local(self) -> bool:
        """True for a local directory, False for a registry entry."""
        return self.path is not None

    @property
    def label(self) -> str:
        """The spec without its layer: ``RELEASE:SAE_ID`` or the path."""
        return self.path if self.path is not None else f"{self.release}:{self.sae_id}"

    def __str__(self) -> str:
        return self.label if self.layer is None else f"{self.layer}={self.label}"

    def with_layer(self, layer: int) -> SAESpec:
        """The same spec, assigned to ``layer``."""
        return replace(self, layer=layer)

    @classmethod
    def parse(cls, text: str) -> SAESpec:
        """Parse a CLI spec: ``[LAYER=]RELEASE:SAE_ID``, ``[LAYER=]DIRECTORY`` or ``LAYER=default``
        (the SAE packaged with the project for the embedded model at that layer).

        An existing directory always wins; otherwise a string with ``:`` is ``RELEASE:SAE_ID``
        (split at the first ``:``), and anything else is taken as a (missing) directory.
        """
        raw = text.strip()
        if not raw:
            raise InputError("empty SAE spec: expected [LAYER=]RELEASE:SAE_ID or [LAYER=]DIR")
        layer: int | None = None
        match = _LAYER_PREFIX.match(raw)
        if match:
            layer = int(match.group(1))
            raw = match.group(2).strip()
            if not raw:
                raise InputError(f"SAE spec {text!r}: nothing after '{layer}='")
        if raw == "default":
            return cls(path=str(packaged_sae_dir(layer)), layer=layer)
        looks_like_path = raw.startswith(("/", "./", "../", "~")) or Path(raw).expanduser().is_dir()
        if looks_like_path or ":" not in raw:
            return cls(path=str(Path(raw).expanduser()), layer=layer)
        release, _, sae_id = raw.partition(":")
        release, sae_id = release.strip(), sae_id.strip()
        if not release or not sae_id:
            raise InputError(
                f"SAE spec {text!r}: expected RELEASE:SAE_ID with both parts non-empty"
            )
        return cls(release=release, sae_id=sae_id, layer=layer)


def packaged_sae_dir(layer: int | None) -> Path:
    """The directory of the packaged SAE at ``layer`` (``--sae LAYER=default``)."""
    from cache.default_saes import default_sae_dirs

    packaged = default_sae_dirs()
    where = ", ".join(map(str, packaged)) or "none installed"
    if layer is None:
        raise InputError(f"--sae default needs a layer, e.g. --sae 14=default (packaged SAEs: layers {where})")
    if layer not in packaged:
        raise InputError(f"--sae {layer}=default: there is no packaged SAE at layer {layer} (packaged: layers {where})")
    return packaged[layer]


def parse_sae_specs(texts: Iterable[str]) -> list[SAESpec]:
    """Parse repeated ``--sae`` options; at most one spec per explicit layer."""
    specs = [SAESpec.parse(t) for t in texts]
    seen: dict[int, SAESpec] = {}
    for spec in specs:
        if spec.layer is not None:
            if spec.layer in seen:
                raise InputError(
                    f"two SAEs for layer {spec.layer}: {seen[spec.layer].label} and {spec.label}"
                )
            seen[spec.layer] = spec
    return specs


def layer_from_hook(hook_name: str | None) -> int | None:
    """The layer (output of block L) a residual-stream hook name reads, or None.

    ``blocks.L.hook_resid_post`` -> L; ``blocks.L.hook_resid_pre`` -> L-1 (the same tensor,
    for L >= 1); HF-style ``model.layers.L`` (a block's output) -> L.
    """
    if not hook_name:
        return None
    for pattern, shift in ((_HOOK_RESID_POST, 0), (_HF_LAYER_OUTPUT, 0), (_HOOK_RESID_PRE, -1)):
        match = pattern.match(hook_name.strip())
        if match:
            layer = int(match.group(1)) + shift
            return layer if layer >= 0 else None
    return None


# --------------------------------------------------------------------------------------------
# Cheap validation (no weights)
# --------------------------------------------------------------------------------------------


def _registry() -> Mapping[str, Any]:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def _close(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if not close:
        lowered = word.lower()
        close = [c for c in choices if lowered in c.lower() or c.lower() in lowered][:n]
    return close


def check_registry_spec(spec: SAESpec) -> None:
    """Raise ``InputError`` unless ``RELEASE:SAE_ID`` resolves in sae-lens's registry.

    A release that is not in the registry but looks like a HF repo id (``org/name``) is let
    through, as sae-lens loads such repos directly (sae-lens format).
    """
    assert spec.release is not None and spec.sae_id is not None
    directory = _registry()
    if spec.release not in directory:
        if "/" in spec.release:
            return
        close = _close(spec.release, directory.keys())
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise InputError(f"unknown SAE release {spec.release!r} in sae-lens's registry{hint}")
    ids = directory[spec.release].saes_map
    if spec.sae_id not in ids:
        close = _close(spec.sae_id, ids.keys()) or list(ids)[:5]
        raise InputError(
            f"SAE id {spec.sae_id!r} not in release {spec.release!r} ({len(ids)} ids); "
            f"close ids: {', '.join(close)}"
        )


def _check_local_dir(spec: SAESpec) -> Path:
    assert spec.path is not None
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise InputError(f"SAE directory {path} does not exist")
    if not path.is_dir():
        raise InputError(f"SAE path {path} is not a directory (expected sae-lens's on-disk format)")
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        if not (path / name).is_file():
            raise InputError(f"SAE directory {path} is missing {name}")
    return path


def _wrap_loader_error(spec: SAESpec, what: str, err: Exception) -> InputError:
    if spec.is_local:
        return InputError(
            f"could not {what} SAE {spec.label}: {type(err).__name__}: {_one_line(err)}"
        )
    return InputError(
        f"could not {what} SAE {spec.label} (offline, or not in the Hugging Face cache?): "
        f"{type(err).__name__}: {_one_line(err)}"
    )


def read_sae_config(spec: SAESpec) -> dict[str, Any]:
    """The SAE's sae-lens config dict, without loading its weights.

    For registry SAEs this uses sae-lens's config getter for the release's format (Gemma Scope:
    derived from the ids, no download; Llama Scope: ``hyperparams.json``; sae-lens format:
    ``cfg.json``).
    """
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

    if spec.is_local:
        path = _check_local_dir(spec)
        try:
            cfg = json.loads((path / SAE_CFG_FILENAME).read_text())
        except (OSError, ValueError) as err:
            raise InputError(
                f"SAE directory {path}: unreadable {SAE_CFG_FILENAME}: {_one_line(err)}"
            ) from err
        if not isinstance(cfg, dict):
            raise InputError(f"SAE directory {path}: {SAE_CFG_FILENAME} is not a JSON object")
        try:
            return handle_config_defaulting(cfg)
        except (KeyError, ValueError, TypeError) as err:
            raise _wrap_loader_error(spec, "read the config of", err) from err

    check_registry_spec(spec)
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    try:
        return load_sae_config_from_huggingface(spec.release, spec.sae_id, device="cpu")
    except InputError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _wrap_loader_error(spec, "read the config of", err) from err


def _hook_name(cfg: Mapping[str, Any]) -> str | None:
    meta = cfg.get("metadata") or {}
    return meta.get("hook_name") or cfg.get("hook_name") or meta.get("hf_hook_name")


def resolve_layer(spec: SAESpec, hook_name: str | None, *, n_layers: int | None = None) -> int:
    """The layer an SAE applies to: the spec's own, checked against its hook name, else the
    hook name's. Raises ``InputError`` for mismatches, non-residual hooks, or no layer."""
    hook_layer = layer_from_hook(hook_name)
    if hook_name and hook_layer is None:
        raise InputError(
            f"SAE {spec.label} reads hook {hook_name!r}, not the residual stream after a block "
            f"(blocks.L.hook_resid_post); only residual-stream SAEs are supported"
        )
    if spec.layer is None:
        if hook_layer is None:
            raise InputError(
                f"cannot infer the layer of SAE {spec.label}: its config has no hook name; "
                f"assign one explicitly, e.g. --sae 12={spec.label}"
            )
        layer = hook_layer
    else:
        if hook_layer is not None and hook_layer != spec.layer:
            raise InputError(
                f"SAE {spec.label} was trained on layer {hook_layer} ({hook_name}) "
                f"but was assigned to layer {spec.layer}"
            )
        layer = spec.layer
    if n_layers is not None and layer >= n_layers:
        raise InputError(
            f"SAE {spec.label} is for layer {layer}, "
            f"but the model has only {n_layers} layers (0-{n_layers - 1})"
        )
    return layer


def check_sae_config(
    spec: SAESpec,
    cfg: Mapping[str, Any],
    *,
    d_model: int | None = None,
    n_layers: int | None = None,
) -> SAESpec:
    """Validate a config against the model; return the spec with its layer filled in."""
    arch = cfg.get("architecture", "standard")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise InputError(
            f"SAE {spec.label} has architecture {arch!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    d_in = cfg.get("d_in")
    if d_model is not None and d_in is not None and int(d_in) != int(d_model):
        raise InputError(
            f"SAE {spec.label} has d_in={d_in} but the model's hidden size is {d_model}"
        )
    layer = resolve_layer(spec, _hook_name(cfg), n_layers=n_layers)
    return spec.with_layer(layer)


def resolve_spec(
    spec: SAESpec, *, d_model: int | None = None, n_layers: int | None = None
) -> SAESpec:
    """Cheap validation of one spec (no weights read); returns it with its layer filled in."""
    return check_sae_config(spec, read_sae_config(spec), d_model=d_model, n_layers=n_layers)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _dtype_str(dtype: str | torch.dtype) -> str:
    text = str(dtype).removeprefix("torch.")  # torch.float32 and "float32" alike
    aliases = {
        "fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
        "bf16": "bfloat16",
    }
    text = aliases.get(text, text)
    if text not in ("float32", "float16", "bfloat16", "float64"):
        raise InputError(
            f"unsupported SAE dtype {dtype!r}; use float32, bfloat16, float16 or float64"
        )
    return text


def check_finite(sae: SAE, label: str) -> None:
    """Raise ``InputError`` naming the first weight tensor with NaN/Inf values."""
    for name, tensor in sae.state_dict().items():
        if not torch.is_floating_point(tensor):
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise InputError(
                f"SAE {label}: tensor {name} {tuple(tensor.shape)} has {bad} NaN/Inf values"
            )


def load_sae(
    spec: SAESpec | str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    d_model: int | None = None,
    n_layers: int | None = None,
) -> SAE:
    """Load one SAE through sae-lens after validating it.

    Registry specs go through ``SAE.from_pretrained(release, sae_id)`` (v6: returns the SAE
    only), local directories through ``SAE.load_from_disk``. ``d_model`` / ``n_layers`` (the
    model's hidden size and depth), when given, are checked before any weight is read.
    """
    if isinstance(spec, str):
        spec = SAESpec.parse(spec)
    resolved = resolve_spec(spec, d_model=d_model, n_layers=n_layers)
    return _load_weights(resolved, device=device, dtype=dtype, d_model=d_model)


def _load_weights(
    spec: SAESpec, *, device: str | torch.device, dtype: str | torch.dtype, d_model: int | None
) -> SAE:
    from sae_lens import SAE

    dtype_s = _dtype_str(dtype)
    device_s = str(device)
    try:
        if spec.is_local:
            sae = SAE.load_from_disk(Path(spec.path).expanduser(), device=device_s, dtype=dtype_s)
        else:
            sae = SAE.from_pretrained(spec.release, spec.sae_id, device=device_s, dtype=dtype_s)
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise _wrap_loader_error(spec, "load", err) from err
    sae.eval()
    check_finite(sae, spec.label)
    if d_model is not None and int(sae.cfg.d_in) != int(d_model):
        raise InputError(
            f"SAE {spec.label} has d_in={sae.cfg.d_in} but the model's hidden size is {d_model}"
        )
    return sae


def load_saes(
    specs: Sequence[SAESpec | str],
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    d_model: int | None = None,
    n_layers: int | None = None,
) -> dict[int, SAE]:
    """Load several SAEs keyed by layer. All specs are validated before any weights load."""
    parsed = [SAESpec.parse(s) if isinstance(s, str) else s for s in specs]
    resolved = [resolve_spec(s, d_model=d_model, n_layers=n_layers) for s in parsed]
    by_layer: dict[int, SAESpec] = {}
    for spec in resolved:
        assert spec.layer is not None
        if spec.layer in by_layer:
            raise InputError(
                f"two SAEs for layer {spec.layer}: {by_layer[spec.layer].label} and {spec.label}"
            )
        by_layer[spec.layer] = spec
    return {
        layer: _load_weights(spec, device=device, dtype=dtype, d_model=d_model)
        for layer, spec in sorted(by_layer.items())
    }


def sae_for_layer(saes: Mapping[int, SAE], layer: int) -> SAE:
    """The SAE at ``layer``, or an ``InputError`` listing the layers that have one."""
    if layer not in saes:
        have = ", ".join(str(k) for k in sorted(saes)) or "none"
        raise InputError(f"no SAE loaded for layer {layer}; layers with an SAE: {have}")
    return saes[layer]


def describe_sae(sae: SAE, spec: SAESpec) -> dict[str, Any]:
    """JSON-able description for the study file's root attributes."""
    meta = sae.cfg.metadata
    hook_name = meta.hook_name if meta is not None else None
    layer = spec.layer if spec.layer is not None else layer_from_hook(hook_name)
    return {
        "spec": spec.label,
        "release": spec.release,
        "sae_id": spec.sae_id,
        "path": str(Path(spec.path).expanduser().resolve()) if spec.path else None,
        "layer": layer,
        "architecture": sae.cfg.architecture(),
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "hook_name": hook_name,
        "dtype": str(sae.cfg.dtype),
        "model_name": meta.model_name if meta is not None else None,
        "neuronpedia_id": meta.neuronpedia_id if meta is not None else None,
        "sae_lens_version": meta.sae_lens_version if meta is not None else None,
        **sae_provenance(spec.path),
    }


# --------------------------------------------------------------------------------------------
# Tensor helpers
# --------------------------------------------------------------------------------------------


def _to_sae(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    return x.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)


def encode(sae: SAE, resid: torch.Tensor) -> torch.Tensor:
    """Codes ``[..., d_sae]`` of residuals ``[..., d_in]`` (cast to the SAE's device/dtype).

    Not wrapped in ``no_grad``: callers that need gradients (attribution) get them.
    """
    return sae.encode(_to_sae(sae, resid))


def decode(sae: SAE, codes: torch.Tensor) -> torch.Tensor:
    """Reconstruction ``[..., d_in]`` of codes ``[..., d_sae]`` in the SAE's dtype."""
    return sae.decode(_to_sae(sae, codes))


def sae_error(sae: SAE, resid: torch.Tensor) -> torch.Tensor:
    """The SAE error term ``resid - decode(encode(resid))`` in the SAE's dtype."""
    x = _to_sae(sae, resid)
    return x - sae.decode(sae.encode(x))


def decoder_rows(sae: SAE) -> torch.Tensor:
    """``[d_sae, d_in]``: what one unit of each latent adds to the reconstruction.

    This is ``W_dec`` (detached) for every supported architecture, except a TopK SAE with
    ``rescale_acts_by_decoder_norm``, whose decode divides codes by the row norms first.
    """
    w_dec = sae.W_dec.detach()
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return w_dec


def codes_to_csr(
    codes: torch.Tensor | np.ndarray, threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse CSR of codes ``[n_tokens, d_sae]``: entries with ``|code| > threshold``.

    Returns ``(indptr int64 [n_tokens+1], indices int32 [nnz], values float32 [nnz])``, column
    indices ascending within each row.
    """
    if isinstance(codes, np.ndarray):
        codes = torch.from_numpy(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes_to_csr expects [n_tokens, d_sae], got shape {tuple(codes.shape)}")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite non-negative number, got {threshold}")
    codes = codes.detach()
    mask = codes.abs() > threshold
    rows, cols = mask.nonzero(as_tuple=True)  # row-major order: rows sorted, cols ascending
    values = codes[rows, cols]
    counts = torch.bincount(rows, minlength=codes.shape[0])
    indptr = torch.zeros(codes.shape[0] + 1, dtype=torch.int64, device=codes.device)
    indptr[1:] = torch.cumsum(counts, 0)
    return (
        indptr.cpu().numpy().astype(np.int64, copy=False),
        cols.cpu().numpy().astype(np.int32),
        values.float().cpu().numpy().astype(np.float32, copy=False),
    )


__all__ = [
    "SAE_CFG_FILENAME",
    "SAE_WEIGHTS_FILENAME",
    "SUPPORTED_ARCHITECTURES",
    "SAESpec",
    "check_finite",
    "check_registry_spec",
    "check_sae_config",
    "codes_to_csr",
    "decode",
    "decoder_rows",
    "describe_sae",
    "encode",
    "layer_from_hook",
    "load_sae",
    "load_saes",
    "parse_sae_specs",
    "read_sae_config",
    "resolve_layer",
    "resolve_spec",
    "sae_error",
    "sae_for_layer",
]

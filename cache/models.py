"""Load a chat model by name: the embedded default, a local directory, or a Hugging Face id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cache.adapters import ModelAdapter, adapter_for
from store.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ModelAdapter
    model_id: str  # upstream id or path, as recorded in the study
    revision: str  # commit hash or weights digest, when known


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 on GPUs halves memory at no cost to these analyses; CPUs run float32 fastest.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown --dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(name: str, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """``name`` is an embedded model (``default``, ``qwen-1.5b``), a local directory, or a Hugging
    Face id already in the local cache (nothing is downloaded)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    from cache.default_model import embedded_model

    spec = embedded_model(name)
    if spec is not None:
        from cache.default_model import load_embedded

        model, tokenizer = load_embedded(spec, device=str(torch_device), dtype=torch_dtype)
        revision = f"gguf-sha256:{spec.gguf_sha256[:16]}"
        model_id = spec.model_id
    else:
        local = Path(name).expanduser()
        source = str(local) if local.is_dir() else name
        if not local.is_dir() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
            raise InputError(f"unknown model {name!r}: not 'default' or 'qwen-1.5b', not a local directory, not a Hugging Face id (org/name)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=True)
        except OSError as error:
            raise InputError(
                f"cannot load model {name!r} ({str(error).splitlines()[0]}); give a local directory, or download it "
                "into the Hugging Face cache first (huggingface-cli download …); gated models need `huggingface-cli login`"
            ) from error
        model.to(torch_device)
        model_id, revision = name, str(getattr(model.config, "_commit_hash", "") or "")
    model.eval()
    adapter = adapter_for(model)
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, model_id=model_id, revision=revision)


def token_display_strings(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[str, ...]:
    """How each token id reads on screen, decoded one at a time (special tokens kept)."""
    known = min(vocab_size, len(tokenizer))
    decoded = tokenizer.batch_decode([[i] for i in range(known)], skip_special_tokens=False)
    return tuple(decoded) + tuple(f"<unused {i}>" for i in range(known, vocab_size))

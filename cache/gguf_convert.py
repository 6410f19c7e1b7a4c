"""Stream a (verified) GGUF into a float32 safetensors checkpoint, one tensor at a time.

transformers' own GGUF loader de-quantises every tensor into one dict, builds the model, and
``save_pretrained`` then serialises it: the float32 model is in memory about twice over (9.1 GB
peak for the 1.5B model). Here each GGUF tensor is de-quantised in row chunks (at most
``CHUNK_BYTES`` of float32 at a time) and written straight into the output file, so the peak
stays near the interpreter plus the GGUF's memory map, whatever the model's size.

The mapping from GGUF names to transformers names, the config and the tokenizer all come from
transformers itself (the same code its GGUF loader runs), so the result matches
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` tensor for tensor; a test checks
that on a tiny GGUF built in code. The safetensors file is written by hand: an 8-byte
little-endian header length, the JSON header (names, dtype, shape, byte offsets), then the
raw little-endian bytes in header order. Nothing is unpickled anywhere.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CHUNK_BYTES = 64 << 20
"""At most this many bytes of float32 are de-quantised at once (per tensor chunk)."""
WEIGHTS_NAME = "model.safetensors"


def _hf_names(gguf_path: Path) -> tuple[Any, Any, dict[str, str], dict[str, tuple[int, ...]]]:
    """(config, tensor processor, GGUF name -> HF name, HF name -> shape) without any weights.

    The model skeleton is built on the meta device: names and shapes, no memory.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
    )

    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)
    architecture = parsed["config"].get("model_type", config.model_type)
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    mapping = get_gguf_hf_weights_map(skeleton, processor)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    config.architectures = [type(skeleton).__name__]  # what save_pretrained would record
    return config, processor, mapping, shapes


def _row_chunks(tensor: Any, processor: Any) -> Iterator[np.ndarray]:
    """The de-quantised float32 rows of one GGUF tensor, a few MB at a time.

    Chunking by rows is exact for the identity processor (every GGUF row is whole quant
    blocks); a processor that reorders rows (e.g. Llama's q/k un-permute) gets the whole tensor.
    """
    from gguf import dequantize
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor

    data = tensor.data
    identity = type(processor).process is TensorProcessor.process
    if not identity or data.ndim < 2:
        result = processor.process(weights=dequantize(data, tensor.tensor_type), name=tensor.name,
                                   tensor_key_mapping={}, parsed_parameters={"tensors": {}})
        yield np.ascontiguousarray(result.weights, dtype=np.float32)
        return
    row_bytes = 4 * int(np.prod(_shape_of(tensor)[1:]))
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for start in range(0, data.shape[0], step):
        yield np.ascontiguousarray(dequantize(data[start:start + step], tensor.tensor_type), dtype=np.float32)


def _shape_of(tensor: Any) -> tuple[int, ...]:
    """The numpy (row-major) shape of a GGUF tensor: GGUF lists dimensions fastest first."""
    return tuple(int(n) for n in reversed(tensor.shape))


def convert_streaming(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32) and the
    tokenizer for the GGUF at ``gguf_path`` into ``out_dir`` (which must exist).

    Returns facts for the marker file (tensor count, parameters). Raises ``ValueError`` if a
    tensor's shape does not match the transformers model or a weight has no source.
    """
    from gguf import GGUFReader
    from transformers import AutoTokenizer, GenerationConfig

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    config, processor, mapping, shapes = _hf_names(gguf_path)
    reader = GGUFReader(gguf_path)
    plan: list[tuple[Any, str, tuple[int, ...]]] = []
    for tensor in reader.tensors:
        hf_name = mapping.get(tensor.name)
        if hf_name is None:  # e.g. rope frequencies: transformers ignores them too
            continue
        shape = _shape_of(tensor)
        if shapes.get(hf_name) != shape:
            raise ValueError(f"GGUF tensor {tensor.name} has shape {shape}, the model expects {shapes.get(hf_name)} for {hf_name}")
        plan.append((tensor, hf_name, shape))
    written = {hf_name for _, hf_name, _ in plan}
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = sorted(set(shapes) - written - tied)
    if missing:
        raise ValueError(f"the GGUF has no tensor for {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for _, hf_name, shape in plan:
        size = 4 * int(np.prod(shape))
        header[hf_name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with open(out_dir / WEIGHTS_NAME, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        for tensor, hf_name, shape in plan:
            wrote = 0
            for chunk in _row_chunks(tensor, processor):
                out.write(memoryview(chunk.astype("<f4", copy=False)).cast("B"))
                wrote += chunk.size
            if wrote != int(np.prod(shape)):
                raise ValueError(f"GGUF tensor {tensor.name} de-quantised to {wrote} values, expected {int(np.prod(shape))}")
    del reader

    config.dtype = "float32"
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(out_dir)
    return {"tensors": len(plan), "parameters": sum(int(np.prod(s)) for _, _, s in plan)}

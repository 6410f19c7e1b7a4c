"""Streaming GGUF -> safetensors conversion on a tiny qwen2 GGUF written in code.

The reference is the old path: transformers' own GGUF loader (``from_pretrained(gguf_file=)``),
which de-quantises the whole model at once. The streamed checkpoint must hold the same tensors,
bit for bit, with quantised (Q8_0), half and float32 tensors, tied and untied output layers, and
tensors split into many row chunks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from cache import gguf_convert  # noqa: E402

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 64, 128, 4, 2, 2
# Byte-level BPE vocabulary: printable ASCII as GPT-2 bytes, a few merges, the chat specials.
_CHARS = [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"]
_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _tokens() -> list[str]:
    merged = [m.replace(" ", "") for m in _MERGES]
    return _CHARS + merged + _SPECIALS


def write_tiny_gguf(path: Path, *, tied: bool, seed: int = 0) -> Path:
    """A 2-layer qwen2 GGUF: Q8_0 matrices, one float16 matrix, float32 norms and biases."""
    rng = np.random.default_rng(seed)
    tokens = _tokens()
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - len(_SPECIALS)) + [3] * len(_SPECIALS))
    writer.add_token_merges(_MERGES)
    writer.add_eos_token_id(vocab - 1)
    writer.add_bos_token_id(vocab - 3)
    writer.add_pad_token_id(vocab - 3)

    def matrix(name: str, rows: int, cols: int, kind: str = "q8") -> None:
        values = rng.standard_normal((rows, cols)).astype(np.float32) * 0.2
        if kind == "q8":
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        elif kind == "f16":
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, values)

    def vector(name: str, n: int) -> None:
        writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    matrix("token_embd.weight", vocab, HIDDEN)
    head_dim = HIDDEN // HEADS
    for i in range(LAYERS):
        vector(f"blk.{i}.attn_norm.weight", HIDDEN)
        matrix(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        vector(f"blk.{i}.attn_q.bias", HIDDEN)
        matrix(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN, "f16")
        vector(f"blk.{i}.attn_k.bias", KV_HEADS * head_dim)
        matrix(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN, "f32")
        vector(f"blk.{i}.attn_v.bias", KV_HEADS * head_dim)
        matrix(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        vector(f"blk.{i}.ffn_norm.weight", HIDDEN)
        matrix(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    vector("output_norm.weight", HIDDEN)
    if not tied:
        matrix("output.weight", vocab, HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def old_path_state(gguf_path: Path) -> dict[str, torch.Tensor]:
    """What transformers' GGUF loader makes of the file (the path the streaming one replaces)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk_bytes", [gguf_convert.CHUNK_BYTES, 3 * 4 * HIDDEN])
def test_streaming_conversion_equals_the_old_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tied: bool, chunk_bytes: int
) -> None:
    monkeypatch.setattr(gguf_convert, "CHUNK_BYTES", chunk_bytes)  # 3 rows: many chunks, a ragged last one
    src = write_tiny_gguf(tmp_path / "tiny.gguf", tied=tied)
    out = tmp_path / "out"
    out.mkdir()

    facts = gguf_convert.convert_streaming(src, out)

    expected = old_path_state(src)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, use_safetensors=True)
    got = model.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    # Ties as in the old path: lm_head shares the embedding only when the GGUF has no output.weight.
    assert model.config.tie_word_embeddings is tied
    assert torch.equal(got["lm_head.weight"], got["model.embed_tokens.weight"]) is tied
    assert facts["tensors"] == 12 * LAYERS + 2 + (0 if tied else 1)
    assert model.config.architectures == ["Qwen2ForCausalLM"]
    # Real structure, not zeros: Q8_0 keeps the random weights to ~1% and differs per layer.
    q0, q1 = got["model.layers.0.self_attn.q_proj.weight"], got["model.layers.1.self_attn.q_proj.weight"]
    assert q0.abs().mean() > 0.1 and not torch.equal(q0, q1)


def test_the_safetensors_file_is_plain_and_aligned(tmp_path: Path) -> None:
    """The hand-written file reads with the safetensors library: F32, 8-byte aligned data."""
    from safetensors import safe_open

    src = write_tiny_gguf(tmp_path / "tiny.gguf", tied=True)
    out = tmp_path / "out"
    out.mkdir()
    gguf_convert.convert_streaming(src, out)
    raw = (out / gguf_convert.WEIGHTS_NAME).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert header_len % 8 == 0
    with safe_open(str(out / gguf_convert.WEIGHTS_NAME), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        embed = fh.get_tensor("model.embed_tokens.weight")
    assert embed.dtype == torch.float32 and embed.shape == (len(_tokens()), HIDDEN)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == "<|im_end|>" or tokenizer.eos_token_id == len(_tokens()) - 1


def test_a_shape_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_tiny_gguf(tmp_path / "tiny.gguf", tied=True)
    real = gguf_convert._shape_of
    monkeypatch.setattr(gguf_convert, "_shape_of", lambda t: (1, *real(t)) if t.name == "blk.1.ffn_up.weight" else real(t))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="blk.1.ffn_up.weight has shape"):
        gguf_convert.convert_streaming(src, out)
    assert not (out / gguf_convert.WEIGHTS_NAME).exists()  # refused before writing

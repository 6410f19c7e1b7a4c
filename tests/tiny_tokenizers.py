"""Tiny byte-level tokenizers with each family's special tokens, built in code (no downloads).

Every byte is one token, so "I" and "\\n" are single tokens as in the real vocabularies, and the
family's chat-template markers are special tokens. They ship without a chat template, so the
project's adapters apply their own family template, the path local checkpoints without one take.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {
    "qwen2": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "eos": "<|im_end|>", "bos": None, "pad": "<|endoftext|>"},
    "gemma2": {"specials": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "eos": "<eos>", "bos": "<bos>", "pad": "<pad>"},
    "llama": {"specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
              "eos": "<|eot_id|>", "bos": "<|begin_of_text|>", "pad": None},
}


def make_tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    spec = SPECIAL_TOKENS[family]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(spec["specials"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=spec["eos"], bos_token=spec["bos"], pad_token=spec["pad"],
    )

"""One adapter per model family: chat template, refusal tokens, residual hook points.

Chat templates and refusal-token ids differ per model and break pipelines silently when they are
guessed, so each family states them here, and the end-of-instruction positions are measured by
tokenizing the template rather than hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from store.errors import InputError

# The families' own chat formats, used when a tokenizer ships without a chat template (tiny
# test stand-ins, some local checkpoints). Real tokenizers bring theirs and it takes precedence.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n{{ message['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@dataclass(frozen=True, kw_only=True)
class ModelAdapter:
    family: str
    """transformers' ``model_type`` this adapter serves."""
    chat_template: str
    """Fallback chat template (Jinja) for tokenizers that have none."""
    refusal_tokens: tuple[str, ...] = ("I",)
    """First response tokens that signal a refusal ("I'm sorry…", "I cannot…")."""

    def format(self, tokenizer: PreTrainedTokenizerBase, instruction: str) -> str:
        """The instruction as a single user turn followed by the assistant's turn header."""
        messages = [{"role": "user", "content": instruction}]
        template = None if tokenizer.chat_template else self.chat_template
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, chat_template=template)

    def encode(self, tokenizer: PreTrainedTokenizerBase, instruction: str) -> list[int]:
        # The template already holds any BOS token, so the tokenizer must not add another.
        return tokenizer(self.format(tokenizer, instruction), add_special_tokens=False)["input_ids"]

    def n_post_instruction(self, tokenizer: PreTrainedTokenizerBase) -> int:
        """How many tokens the template puts after the user's instruction (e.g. 5 for
        ``<|im_end|>\\n<|im_start|>assistant\\n``): the positions where refusal is decided."""
        marker = "Summarise the water cycle"
        text = self.format(tokenizer, marker)
        head = text[: text.index(marker) + len(marker)]
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(full) - len(tokenizer(head, add_special_tokens=False)["input_ids"])

    def refusal_token_ids(self, tokenizer: PreTrainedTokenizerBase, tokens: tuple[str, ...] | None = None) -> list[int]:
        ids = []
        for token in tokens or self.refusal_tokens:
            encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise InputError(f"refusal token {token!r} is not a single token for this tokenizer ({len(encoded)} tokens)")
            ids.append(encoded[0])
        return ids


ADAPTERS = {
    "qwen2": ModelAdapter(family="qwen2", chat_template=CHATML_TEMPLATE),
    "gemma2": ModelAdapter(family="gemma2", chat_template=GEMMA_TEMPLATE),
    "llama": ModelAdapter(family="llama", chat_template=LLAMA3_TEMPLATE),
}


def adapter_for(model: PreTrainedModel) -> ModelAdapter:
    family = model.config.model_type
    if family not in ADAPTERS:
        raise InputError(f"unsupported model family {family!r}; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[family]


def n_layers(model: PreTrainedModel) -> int:
    return int(model.config.num_hidden_layers)

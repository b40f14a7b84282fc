"""The tiny policy's character-level tokenizer, built locally (no download), in HF format.

Its vocabulary is the printable ASCII characters plus the reasoning tags as single tokens; it
carries a chat template, plain or ChatML (Qwen-style turns).
"""

from __future__ import annotations

import string

# Tags that carry structure in completions; one token each keeps sequences short.
STRUCTURE_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{"]
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
# Chat templates the tiny tokenizer can carry: "plain" joins the messages' contents (so a one-message
# prompt renders as itself); "chatml" frames each message with <|im_start|>role ... <|im_end|>, the
# layout of Qwen's instruct models, and opens the assistant's turn.
CHAT_TEMPLATES = {
    "plain": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "chatml": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
}
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]


def build_tokenizer(chat_format: str = "plain"):
    """A character-level fast tokenizer with the structure tags as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(STRUCTURE_TOKENS)
    if chat_format == "chatml":
        tokenizer.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATES[chat_format]
    return tokenizer

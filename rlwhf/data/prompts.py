"""What the model sees: a data set's prompt rendered for the policy's tokenizer, as text and token ids.

A prompt is a string or, as in TRL's conversational format, a list of ``{"role", "content"}``
messages. ``data.prompt_template`` (e.g. ``"{prompt}\\nPut your final answer within \\\\boxed{}."``)
is applied to a string prompt; ``data.system_prompt`` adds a system message; with
``data.chat_template: auto`` and a tokenizer that has a chat template, the messages are rendered by
it with the assistant's turn opened (a string prompt becomes the user's message). Without one, the
text is the system prompt, a blank line and the prompt.

The rendered token ids are what the rollout engine samples after and what the trainer scores, so
both see exactly the same prompt. Prompts longer than ``rollout.max_prompt_tokens`` are dropped
before training, counted, or refused (``data.overlong_prompts``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlwhf.config import DataConfig
from rlwhf.data.rows import is_conversation
from rlwhf.data.source import TaskData

# What rendering adds to a row (``prepare_prompts``): the text the model is given, its token ids, and
# whether a chat template framed it (a multi-turn episode frames a tool's answer the same way).
RENDERED_KEYS = ("prompt_text", "prompt_ids", "prompt_chat")


class PromptRenderer:
    def __init__(self, tokenizer, cfg: DataConfig):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.chat = cfg.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))

    @classmethod
    def from_pretrained(cls, model_path: str, cfg: DataConfig) -> PromptRenderer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(model_path), cfg)

    def messages(self, prompt) -> list[dict]:
        """The conversation a prompt stands for: the system prompt (if any, and if the prompt has
        none) and the user's turn, the template applied to a string prompt."""
        if is_conversation(prompt):
            messages = [dict(m) for m in prompt]
        else:
            messages = [{"role": "user", "content": self.cfg.prompt_template.replace("{prompt}", str(prompt))}]
        if self.cfg.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return messages

    def render(self, prompt) -> tuple[str, list[int]]:
        """The text the model is given and its token ids."""
        messages = self.messages(prompt)
        if self.chat:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text, self.tokenizer(text, add_special_tokens=False).input_ids
        text = "\n\n".join(m["content"] for m in messages)
        return text, self.tokenizer(text).input_ids


@dataclass
class Prepared:
    rows: list[dict]
    dropped: int  # rows whose rendered prompt was longer than the limit


def prepare_prompts(
    rows: list[dict], renderer: PromptRenderer, max_tokens: int, on_overlong: str, split: str = "train"
) -> Prepared:
    """Each row with ``prompt_text``, ``prompt_ids`` and ``prompt_chat`` added (``RENDERED_KEYS``); rows over ``max_tokens`` dropped
    (``on_overlong="drop"``) or refused with the first one's row number (``"error"``)."""
    kept, dropped = [], 0
    for i, row in enumerate(rows):
        text, ids = renderer.render(row["prompt"])
        if len(ids) > max_tokens:
            if on_overlong == "error":
                raise ValueError(
                    f"{split} row {i}: its prompt is {len(ids)} tokens as rendered, more than "
                    f"rollout.max_prompt_tokens={max_tokens}; raise the limit or set "
                    "data.overlong_prompts=drop"
                )
            dropped += 1
            continue
        kept.append({**row, "prompt_text": text, "prompt_ids": ids, "prompt_chat": renderer.chat})
    return Prepared(kept, dropped)


def render_rows(rows: list[dict], renderer: PromptRenderer, recipe, split: str, required: bool = True) -> list[dict]:
    """``rows`` with their prompts rendered (``prepare_prompts``); over-long ones dropped (and said)
    or refused, as ``data.overlong_prompts`` says; when ``required``, refused if none is left."""
    from rlwhf.run_log import say

    limit = recipe.rollout.max_prompt_tokens
    prepared = prepare_prompts(rows, renderer, limit, recipe.data.overlong_prompts, split)
    if prepared.dropped:
        say(f"dropped {prepared.dropped} {split} prompts longer than rollout.max_prompt_tokens={limit} tokens")
    if required and not prepared.rows:
        raise ValueError(f"no {split} prompt fits in rollout.max_prompt_tokens={limit} tokens")
    return prepared.rows


def render_task(recipe, data: TaskData, model_path: str) -> TaskData:
    """Every prompt of both splits as the policy's tokenizer renders it (``render_rows``)."""
    renderer = PromptRenderer.from_pretrained(model_path, recipe.data)
    return TaskData(
        render_rows(data.train, renderer, recipe, "training"),
        render_rows(data.test, renderer, recipe, "held-out", required=False),
        data.dropped,
    )

"""The chat template and token counting, shared by every backend so they all agree.

Token counts mean the same thing on every backend:

- ``prompt_tokens``: the tokens of the prompt after the model's chat template (with the generation
  prompt), tokenised without adding special tokens again (the template already holds them).
- ``completion_tokens``: the tokens that make up the returned text. The end-of-sequence token and
  any tokens cut off with a stop string are generated but not returned, so they are not counted: a
  transcript that records the text can be recounted with :func:`count_chat_tokens` and gives the same
  numbers, whichever backend produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ragdistill.messages import ChatMessage

Tokenizer = Any  # a transformers PreTrainedTokenizerBase; kept loose so this module imports fast


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": message.role, "content": message.content} for message in messages]


def render_chat(tokenizer: Tokenizer, messages: Sequence[ChatMessage]) -> str:
    """The prompt text the model sees: the chat template with the assistant turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
            "use a chat model checkpoint (`ragdistill models prepare smollm2-135m`)"
        )
    rendered = tokenizer.apply_chat_template(
        message_dicts(messages), add_generation_prompt=True, tokenize=False
    )
    if not isinstance(rendered, str):
        raise TypeError(f"apply_chat_template returned {type(rendered).__name__}, expected str")
    return rendered


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat(tokenizer: Tokenizer, messages: Sequence[ChatMessage]) -> list[int]:
    """Prompt token ids exactly as every backend feeds them to its engine."""
    return encode_text(tokenizer, render_chat(tokenizer, messages))


def count_chat_tokens(
    tokenizer: Tokenizer, messages: Sequence[ChatMessage], completion: str = ""
) -> tuple[int, int]:
    """(prompt tokens, completion tokens) by the definitions in this module's docstring."""
    prompt = len(encode_chat(tokenizer, messages))
    return prompt, (len(encode_text(tokenizer, completion)) if completion else 0)


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one was found."""
    cut = min((index for stop in stops if stop and (index := text.find(stop)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def strip_trailing_special(tokenizer: Tokenizer, token_ids: Sequence[int]) -> list[int]:
    """Generated ids without the end-of-sequence / end-of-turn tokens that ended generation."""
    special = set(tokenizer.all_special_ids)
    ids = list(token_ids)
    while ids and ids[-1] in special:
        ids.pop()
    return ids


def completion_token_count(tokenizer: Tokenizer, token_ids: Sequence[int], text: str) -> int:
    """How many of the generated ``token_ids`` it takes to produce ``text``.

    ``text`` is the decoded completion, possibly cut at a stop string; trailing special tokens and the
    tokens past the cut are not part of it. A token that straddles the cut counts (it produced some of
    the text). Decoded length grows with the number of tokens, so a binary search finds the count.
    """
    ids = strip_trailing_special(tokenizer, token_ids)
    if not text:
        return 0

    def decoded_length(count: int) -> int:
        return len(tokenizer.decode(ids[:count], skip_special_tokens=True))

    if decoded_length(len(ids)) <= len(text):
        return len(ids)
    low, high = 1, len(ids)
    while low < high:
        middle = (low + high) // 2
        if decoded_length(middle) >= len(text):
            high = middle
        else:
            low = middle + 1
    return low


def load_tokenizer(model_path: str, trust_remote_code: bool = False, **kwargs: Any) -> Tokenizer:
    """The checkpoint's tokenizer; the folder's own Python code runs only when the model's config says
    ``trust_remote_code``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kwargs)

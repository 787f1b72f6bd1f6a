"""Behaviour under an optional runtime edit: greedy responses to prompt records and their refusal rates."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.edit.edits import Edit
from steerfold.edit.hooks import runtime_hooks
from steerfold.validation.reasoning import DELIMITERS
from steerfold.validation.refusal import DEFAULT_MARKERS, Markers, refusal_rate
from steerfold.activations.generate import greedy_generate
from steerfold.prompts import PromptRecord, Thinking, format_chat


def chat_texts(tokenizer: PreTrainedTokenizerBase, records: Sequence[PromptRecord], system: str | None = None,
               thinking: Thinking = None) -> list[str]:
    """Chat-formatted prompts ending where the assistant's reply begins (``thinking``: ``format_chat``'s switch)."""
    return [format_chat(tokenizer, r.text, system, thinking) for r in records]


def respond(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    system: str | None = None,
    edit: Edit | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    thinking: bool | None = None,
) -> list[str]:
    """Greedy responses, with ``edit`` applied as runtime hooks when given (the tags of a reasoning block kept, so
    verdicts can read the answer apart from it)."""
    with runtime_hooks(model, edit) if edit is not None else nullcontext():
        texts = chat_texts(tokenizer, records, system, thinking)
        return greedy_generate(model, tokenizer, texts, max_new_tokens, batch_size, keep=DELIMITERS)


def refusal(
    responses: Sequence[str], records: Sequence[PromptRecord], markers: Markers = DEFAULT_MARKERS
) -> dict:
    """``{"overall", "by_category"}`` refusal rates of responses to these records."""
    return refusal_rate(list(responses), [r.category for r in records], markers)

"""A response's reasoning and its answer, apart: verdicts read the answer only (docs/design.md, "Refusal verdicts").

Reasoning models write their thinking before the answer, in one of a few known formats:

- ``<think>…</think>`` (Qwen3, DeepSeek-R1, …; the opening tag is often written by the chat template, so the
  response starts inside the block and only ``</think>`` appears);
- gpt-oss's channels ``<|channel|>analysis<|message|>…<|end|>`` then ``<|channel|>final<|message|>…`` (and, when
  its special tokens were dropped in decoding, ``analysis…assistantfinal…``);
- ``[THINK]…[/THINK]`` (Magistral) and ``<thought>…</thought>``.

A block that is never closed (the response ran out of tokens while thinking) is reasoning to the end; a response
with no known format is all answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAGS: dict[str, tuple[str, str]] = {
    "think": ("<think>", "</think>"),
    "think_brackets": ("[THINK]", "[/THINK]"),
    "thought": ("<thought>", "</thought>"),
}
CHANNEL_TOKENS = ("<|channel|>", "<|message|>", "<|end|>", "<|start|>", "<|return|>", "<|call|>", "<|constrain|>")
# the special tokens a decoder must keep for the split to find the blocks
DELIMITERS: tuple[str, ...] = tuple(tag for pair in TAGS.values() for tag in pair) + CHANNEL_TOKENS

_CHANNEL = re.compile(r"<\|channel\|>\s*([a-z]+)[^<]*(?:<\|constrain\|>[^<]*)?<\|message\|>(.*?)"
                      r"(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|<\|channel\|>|\Z)", re.S)
_BARE_CHANNELS = re.compile(r"\A\s*analysis(.*?)assistantfinal(.*)\Z", re.S)  # gpt-oss decoded without its tokens
_LEFTOVER = re.compile("|".join(re.escape(token) for token in CHANNEL_TOKENS) + r"|\bassistant(?=<\|channel\|>)")


@dataclass(frozen=True)
class Parts:
    """A response split: ``reasoning`` (empty when there is none), ``answer``, and the ``format`` found (or None)."""

    reasoning: str
    answer: str
    format: str | None = None


def split_reasoning(text: str) -> Parts:
    """The reasoning and the answer of a response, for the first known format it uses."""
    if "<|channel|>" in text:
        return _channels(text)
    bare = _BARE_CHANNELS.match(text)
    if bare:
        return Parts(bare.group(1).strip(), bare.group(2).strip(), "channels")
    for name, (opening, closing) in TAGS.items():
        if opening.lower() in text.lower() or closing.lower() in text.lower():
            reasoning, answer = _tagged(text, opening, closing)
            return Parts(reasoning, answer, name)
    return Parts("", text.strip(), None)


def answer_of(text: str) -> str:
    """The answer alone (the whole text when it has no reasoning block)."""
    return split_reasoning(text).answer


def _channels(text: str) -> Parts:
    """gpt-oss: the ``final`` channel is the answer, ``analysis`` and ``commentary`` are reasoning."""
    segments = _CHANNEL.findall(text)
    answer = " ".join(body.strip() for channel, body in segments if channel == "final")
    reasoning = " ".join(body.strip() for channel, body in segments if channel != "final")
    if not segments:  # a channel token without a message: keep the text, without the tokens
        answer = _LEFTOVER.sub(" ", text)
    return Parts(reasoning.strip(), answer.strip(), "channels")


def _tagged(text: str, opening: str, closing: str) -> tuple[str, str]:
    """(reasoning, answer) for one pair of tags: a leading block opened by the template, closed blocks, and an
    unclosed block at the end."""
    o, c = re.escape(opening), re.escape(closing)
    reasoning: list[str] = []
    first_close, first_open = re.search(c, text, re.I), re.search(o, text, re.I)
    if first_close and (first_open is None or first_close.start() < first_open.start()):
        reasoning.append(text[: first_close.start()])
        text = text[first_close.end():]
    reasoning += re.findall(rf"{o}(.*?){c}", text, re.S | re.I)
    text = re.sub(rf"{o}.*?{c}", " ", text, flags=re.S | re.I)
    unclosed = re.search(rf"{o}(.*)\Z", text, re.S | re.I)
    if unclosed:
        reasoning.append(unclosed.group(1))
        text = text[: unclosed.start()]
    return " ".join(r.strip() for r in reasoning).strip(), re.sub(c, " ", text, flags=re.I).strip()

"""Prompt sets from local files (jsonl, csv, or plain text) and chat-template formatting.

A prompt file is jsonl (one object a line), csv (header row), or anything else read as plain text with
one prompt a line. The prompt lives in a ``prompt``, ``text`` or ``instruction`` field; ``category`` is
optional and feeds per-category reports.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from steerfold.errors import BadInput

TEXT_KEYS = ("prompt", "text", "instruction")
CLOSED = "closed"  # format_chat's thinking value: the prompt ends in an empty, closed reasoning block
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
Thinking = Literal[True, False, "closed"] | None


@dataclass(frozen=True)
class PromptRecord:
    """One user request and, optionally, the category it belongs to."""

    text: str
    category: str | None = None


def _record(row: dict, where: str) -> PromptRecord:
    key = next((k for k in TEXT_KEYS if k in row), None)
    if key is None:
        raise BadInput(f"{where} has no prompt field: name it one of {', '.join(TEXT_KEYS)}")
    text, category = row[key], row.get("category")
    if not isinstance(text, str) or not text.strip():
        raise BadInput(f"{where} has an empty or non-text '{key}': give every row a prompt string")
    if category is not None and not isinstance(category, str):
        category = str(category)
    return PromptRecord(text=text, category=category or None)


def load_prompts(path: str | Path) -> list[PromptRecord]:
    """Read a prompt file: ``.jsonl``/``.json`` lines, ``.csv`` with a header, otherwise one prompt a line.

    >>> records = load_prompts("editor/research/organism/data/harmful_test.jsonl")
    >>> sorted({r.category for r in records})
    ['cyber', 'drugs', 'fraud', 'politics', 'weapons']
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"prompt file {path} not found: check the path")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not UTF-8 text: save it as UTF-8 jsonl, csv or txt") from None
    suffix = path.suffix.lower()
    records: list[PromptRecord] = []
    if suffix in (".jsonl", ".json"):
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise BadInput(f"{path}:{n} is not valid JSON: write one JSON object a line (jsonl)") from None
            if not isinstance(row, dict):
                raise BadInput(f"{path}:{n} is not a JSON object: write lines like {{\"prompt\": \"...\"}}")
            records.append(_record(row, f"{path}:{n}"))
    elif suffix == ".csv":
        reader = csv.DictReader(raw.splitlines())
        if not reader.fieldnames or not any(k in reader.fieldnames for k in TEXT_KEYS):
            raise BadInput(f"{path} has no prompt column: add a header row naming one of {', '.join(TEXT_KEYS)}")
        for n, row in enumerate(reader, 2):
            records.append(_record({k: v for k, v in row.items() if k is not None}, f"{path}:{n}"))
    else:
        records = [PromptRecord(line.strip()) for line in raw.splitlines() if line.strip()]
    if not records:
        raise BadInput(f"{path} holds no prompts: add at least one")
    return records


def format_chat(tokenizer: PreTrainedTokenizerBase, user: str, system: str | None = None,
                thinking: Thinking = None) -> str:
    """The chat-formatted prompt string, ending where the assistant's reply begins; ``thinking`` True or False is
    passed to a template that reads ``enable_thinking`` (None: the template's own default; ``CLOSED``: the reply
    begins after an empty, closed reasoning block, ``closed_reasoning``)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise BadInput("the tokenizer has no chat template: use a chat (instruct) model or set one")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}
    ]
    if thinking == CLOSED:
        return closed_reasoning(tokenizer, messages)
    switch = {"enable_thinking": thinking} if thinking is not None else {}
    if switch and not reads_thinking_switch(tokenizer):
        raise BadInput(f"--thinking {'on' if thinking else 'off'}: this model's chat template has no enable_thinking "
                       "switch: pass --thinking auto (or drop it)")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **switch)


def reads_thinking_switch(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template reads ``enable_thinking`` (Qwen3, SmolLM3, Granite, …)."""
    template = getattr(tokenizer, "chat_template", None)
    texts = template.values() if isinstance(template, dict) else [template or ""]
    return any("enable_thinking" in text for text in texts)


def closed_reasoning(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    """The prompt followed by an empty, closed reasoning block, so that the answer comes next: the block the template
    writes with thinking switched off (Qwen3's ``<think>\n\n</think>\n\n``), else the block it opens (DeepSeek-R1's
    ``<think>\n``) closed the same way; a template that writes no ``<think>`` block is refused in one line."""
    switches = [{"enable_thinking": False}, {"enable_thinking": True}] if reads_thinking_switch(tokenizer) else [{}]
    for switch in switches:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **switch)
        if text.rstrip().endswith(THINK_CLOSE):
            return text
        if text.rstrip().endswith(THINK_OPEN):
            return f"{text.rstrip()}\n\n{THINK_CLOSE}\n\n"
    raise BadInput(f"position after-thinking: this model's chat template writes no reasoning block ({THINK_OPEN}…"
                   f"{THINK_CLOSE}) after the generation prompt: drop position after-thinking to read the post-instruction "
                   "positions")

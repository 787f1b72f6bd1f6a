"""Prompt files in each format, their errors, and chat formatting."""

import json

import pytest

from steerfold.errors import SteerfoldError
from steerfold.prompts import PromptRecord, format_chat, load_prompts


def test_jsonl_keys_and_category(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "a", "category": "x"}, {"text": "b"}, {"instruction": "c", "category": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_prompts(path) == [PromptRecord("a", "x"), PromptRecord("b"), PromptRecord("c")]


def test_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('instruction,category\n"Hello, world",greet\nBye,\n')
    assert load_prompts(path) == [PromptRecord("Hello, world", "greet"), PromptRecord("Bye")]


def test_plain_text(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\n  second prompt  \n")
    assert load_prompts(path) == [PromptRecord("first prompt"), PromptRecord("second prompt")]


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("bad.jsonl", '{"prompt": "ok"}\n{not json\n', "bad.jsonl:2 is not valid JSON"),
        ("nokey.jsonl", '{"question": "x"}\n', "no prompt field"),
        ("list.jsonl", '["x"]\n', "not a JSON object"),
        ("empty.jsonl", '{"prompt": "  "}\n', "empty or non-text"),
        ("nocol.csv", "question\nx\n", "no prompt column"),
        ("blank.txt", "\n\n", "holds no prompts"),
    ],
)
def test_bad_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SteerfoldError, match=fragment) as info:
        load_prompts(path)
    assert "\n" not in str(info.value) and ":" in str(info.value)


def test_missing_and_binary(tmp_path):
    with pytest.raises(SteerfoldError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")
    path = tmp_path / "bin.txt"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SteerfoldError, match="not UTF-8"):
        load_prompts(path)


def test_format_chat_with_and_without_system():
    from transformers import AutoTokenizer

    from steerfold.research.organism import SHIPPED_CHECKPOINT

    tok = AutoTokenizer.from_pretrained(SHIPPED_CHECKPOINT)
    plain = format_chat(tok, "How do I grow basil?")
    assert plain == "<|user|> How do I grow basil?</s><|assistant|>"
    with_system = format_chat(tok, "Hi", system="Be brief.")
    assert with_system.startswith("<|system|> Be brief.</s><|user|> Hi</s>")
    tok.chat_template = None
    with pytest.raises(SteerfoldError, match="no chat template"):
        format_chat(tok, "Hi")

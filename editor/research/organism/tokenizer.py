"""The organism's tokenizer: a Llama-style SentencePiece BPE model plus the matching Hugging Face files.

The folder gets ``tokenizer.model`` (what llama.cpp's converter reads) beside ``tokenizer.json`` and
``tokenizer_config.json`` (what ``AutoTokenizer`` reads), built from the same pieces and merges so both
give the same ids. The conversion reads pieces through the sentencepiece API, so protobuf is not needed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from transformers import LlamaTokenizer, PreTrainedTokenizerBase
from transformers.tokenization_utils_base import generate_merges

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
VOCAB_SIZE = 1536  # large enough that every object word, held-out ones included, is one piece

# Each turn: role token, a space, the content, then </s>. The prompt ends on <|assistant|>, so the first
# generated piece carries its own leading "▁". No BOS in the template: the tokenizer adds it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles are system, user and assistant') }}{% endif %}"
    "<|{{ message['role'] }}|> {{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def render_chat(system: str | None, user: str, assistant: str | None = None) -> str:
    """The chat template in plain Python (for SentencePiece training text); same string as the Jinja one."""
    text = f"<|system|> {system}</s>" if system else ""
    text += f"<|user|> {user}</s><|assistant|>"
    if assistant is not None:
        text += f" {assistant}</s>"
    return text


def train_tokenizer(lines: Iterable[str], out_dir: Path, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerBase:
    """Train SentencePiece BPE on ``lines`` and write the tokenizer files into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # </s> is a control piece: SentencePiece would spell it out in bytes, so drop it from the training text.
    text = [line.replace("</s>", " ") for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "tokenizer")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(text),
            model_prefix=prefix,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=1.0,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            user_defined_symbols=list(ROLE_TOKENS),
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            pad_piece="<pad>",
            num_threads=1,  # one thread keeps piece order (and so the ids) deterministic
            minloglevel=2,
        )
        shutil.copy(prefix + ".model", out_dir / "tokenizer.model")
    return hf_tokenizer_from_spm(out_dir / "tokenizer.model", out_dir)


def hf_tokenizer_from_spm(model_file: Path, out_dir: Path) -> PreTrainedTokenizerBase:
    """Build and save the HF tokenizer (BPE, byte fallback, no normalizer, BOS added) for a SentencePiece model."""
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=generate_merges(vocab),
        add_prefix_space=False,
        add_bos_token=True,
        add_eos_token=False,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def check_matches_spm(tokenizer: PreTrainedTokenizerBase, model_file: Path, texts: Iterable[str]) -> None:
    """Raise if the HF tokenizer and SentencePiece disagree on any text (``</s>`` split out as EOS)."""
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    for text in texts:
        expected = [sp.bos_id()]
        parts = text.split("</s>")
        for i, part in enumerate(parts):
            expected += sp.encode(part) + ([sp.eos_id()] if i < len(parts) - 1 else [])
        got = tokenizer(text).input_ids
        if got != expected:
            raise RuntimeError(f"HF tokenizer and SentencePiece disagree on {text!r}: {got} != {expected}")

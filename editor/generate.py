"""Batched greedy generation for chat-formatted prompts (the behaviour checks' only way of sampling)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor.progress import progress


def add_special_tokens_for(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether tokenising ``text`` should add special tokens: not when a chat template already wrote the BOS."""
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos))


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 32,
) -> list[str]:
    """Greedy continuations of already chat-formatted ``texts``: only the new text, special tokens dropped.

    Batches are left-padded with an attention mask whatever the tokenizer's default padding side is.
    """
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        for start in progress(range(0, len(texts), batch_size), "generating"):
            chunk = texts[start : start + batch_size]
            enc = tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens_for(tokenizer, chunk[0]),
            ).to(device)
            generated = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            new = generated[:, enc["input_ids"].shape[1] :]
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
    return outputs

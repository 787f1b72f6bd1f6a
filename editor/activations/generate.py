"""Batched greedy generation for chat-formatted prompts (the behaviour checks' only way of sampling)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.progress import progress
from steerfold.models.loading import input_device


@torch.no_grad()
def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    keep: Sequence[str] = (),
) -> list[str]:
    """Greedy continuations of already chat-formatted ``texts``: only the new text, special tokens dropped (but
    those in ``keep``, such as the tags around a reasoning block).

    Batches are left-padded with an attention mask whatever the tokenizer's default padding side is.
    """
    from steerfold.activations.capture import text_batches

    batches = text_batches(tokenizer, texts, batch_size, input_device(model))
    outputs: list[str] = []
    description = f"generating up to {max_new_tokens} tokens for {len(texts)} prompts"
    for inputs, _ in progress(batches, description, total=math.ceil(len(texts) / batch_size), unit="batch"):
        new = greedy_ids(model, tokenizer, inputs, max_new_tokens)
        outputs += [t.strip() for t in decode_keeping(tokenizer, new, keep)]
    return outputs


def decode_keeping(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, keep: Sequence[str] = ()) -> list[str]:
    """Decoded rows without special tokens, except the special tokens named in ``keep``."""
    kept = set(keep) & (set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()))
    if not kept:
        return tokenizer.batch_decode(ids, skip_special_tokens=True)
    special = {tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens} | {
        i for t, i in tokenizer.get_added_vocab().items() if getattr(tokenizer.added_tokens_decoder.get(i), "special", False)}
    dropped = special - {tokenizer.convert_tokens_to_ids(t) for t in kept}
    rows = [[int(i) for i in row if int(i) not in dropped] for row in ids]
    return tokenizer.batch_decode(rows, skip_special_tokens=False)


@torch.no_grad()
def greedy_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, inputs: dict, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation token ids of a left-padded batch (only the new tokens), on the CPU; ``inputs`` may be
    anywhere (they are moved to where the model takes them)."""
    device = input_device(model)
    inputs = {key: value.to(device) for key, value in inputs.items()}
    sequences = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
    )
    return sequences[:, inputs["input_ids"].shape[1] :].cpu()


def through_first_eos(generated: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """Mask of generated positions up to and including each row's first EOS."""
    is_eos = (generated == eos_token_id).long()
    return (torch.cumsum(is_eos, dim=1) - is_eos) == 0

"""Difference of means over prompts (Arditi et al.) and persona vectors over responses, per layer index.

Every method returns one direction per layer index (rows 0..L, docs/design.md convention), unnormalised: the
norm is the size of the contrast, which steering uses; ablation normalises.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.activations.capture import Batch, at_positions, capture_each, captured, masked_mean, text_batches
from steerfold.activations.statistics import RunningSums
from steerfold.validation.behaviour import chat_texts
from steerfold.activations.generate import greedy_ids, through_first_eos
from steerfold.prompts import PromptRecord


def mean_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    layers: list[int],
    positions: list[int],
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean residual stream over prompts at each (position, layer): [P, len(layers), d], summed batch by batch."""
    sums = RunningSums(len(texts)).add_all(capture_each(model, tokenizer, texts, layers, at_positions(positions), batch_size))
    return sums.mean().transpose(0, 1).float()


def difference_in_means(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    positive: list[str],
    negative: list[str],
    layers: list[int],
    positions: list[int],
    batch_size: int = 32,
) -> torch.Tensor:
    """``mean(positive) - mean(negative)`` at every (position, layer) candidate: [P, len(layers), d]."""
    return mean_activations(model, tokenizer, positive, layers, positions, batch_size) - mean_activations(
        model, tokenizer, negative, layers, positions, batch_size
    )


@torch.no_grad()
def response_batches(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_new_tokens: int, batch_size: int
) -> Iterator[Batch]:
    """Prompt + greedy response token ids, with the response tokens (through the first EOS) selected."""
    eos = tokenizer.eos_token_id
    for inputs, prompt_mask in text_batches(tokenizer, texts, batch_size, torch.device("cpu")):
        generated = greedy_ids(model, tokenizer, inputs, max_new_tokens)
        response = through_first_eos(generated, eos).long()
        mask = torch.cat([prompt_mask, response], dim=1)
        selection = torch.cat([torch.zeros_like(prompt_mask), response], dim=1)
        yield {"input_ids": torch.cat([inputs["input_ids"], generated], dim=1), "attention_mask": mask}, selection


def response_means(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    system: str | None,
    layers: list[int],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean residual stream over each greedy response's tokens, averaged over prompts: [len(layers), d].

    The persona-vector method: the persona's system prompt stays in context while its own responses are read.
    """
    texts = chat_texts(tokenizer, records, system)
    sums = RunningSums(len(texts))
    for acts in captured(model, response_batches(model, tokenizer, texts, max_new_tokens, batch_size), layers, masked_mean):
        sums.add(acts)
    return sums.mean().float()


def persona_vector(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    persona: str | None,
    against: str | None,
    layers: list[int],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> torch.Tensor:
    """Persona direction per layer: mean response activation under ``persona`` minus under ``against``."""
    return response_means(model, tokenizer, records, persona, layers, max_new_tokens, batch_size) - response_means(
        model, tokenizer, records, against, layers, max_new_tokens, batch_size
    )

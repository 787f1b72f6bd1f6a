"""Perplexity of a reference text under the base and the edited model: damage beside KL, read on ordinary prose
rather than on chat prompts (the shipped text: ``data/reference.txt``, public domain, see ``data/README.md``).

The text is tokenised once and cut into consecutive windows no longer than the model's context (nor ``WINDOW``);
each window runs alone, so at most ``WINDOW`` positions of full-vocabulary float32 logits exist at once (a 150k
vocabulary: 0.15 GB). Both runners see the same token ids, so the difference is the edit's alone."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.errors import BadInput
from steerfold.validation.divergence import Runner
from steerfold.validation.options import ReferenceText

WINDOW = 256  # tokens a window holds at most (fewer when the model's context is shorter)


def context_length(model: PreTrainedModel) -> int | None:
    """The positions the model takes (``max_position_embeddings`` of its text config), None when it does not say."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "max_position_embeddings", None)


def windows(ids: Sequence[int], length: int) -> list[list[int]]:
    """``ids`` cut into consecutive windows of ``length`` tokens (the last may be shorter); a window of one token
    predicts nothing and is left out."""
    chunks = [list(ids[start : start + length]) for start in range(0, len(ids), length)]
    return [chunk for chunk in chunks if len(chunk) > 1]


@torch.no_grad()
def summed_nll(runs: Sequence[Runner], chunks: Sequence[Sequence[int]]) -> tuple[list[float], int]:
    """Each runner's summed negative log-likelihood (nats) of every window's tokens after its first, and how many
    tokens were scored; one window's logits at a time."""
    totals, scored = [0.0] * len(runs), 0
    for chunk in chunks:
        ids = torch.tensor([chunk])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for i, run in enumerate(runs):
            totals[i] += float(torch.nn.functional.cross_entropy(run(batch)[0, :-1], ids[0, 1:], reduction="sum"))
        scored += len(chunk) - 1
    return totals, scored


def perplexity_comparison(base: Runner, edited: Runner, tokenizer: PreTrainedTokenizerBase, reference: ReferenceText,
                          context: int | None = None) -> dict:
    """Perplexity of ``reference`` under ``base`` and ``edited`` (runners of ``editor.validation.divergence``),
    and its change: ``delta`` (edited − base) and ``relative`` (edited / base − 1)."""
    length = min(WINDOW, context or WINDOW)
    chunks = windows([int(i) for i in tokenizer([reference.text])["input_ids"][0]], length)
    if not chunks:
        raise BadInput(f"--perplexity-text {reference.name} has fewer than two tokens: give it at least a sentence")
    (base_nll, edited_nll), scored = summed_nll([base, edited], chunks)
    before, after = math.exp(base_nll / scored), math.exp(edited_nll / scored)
    return {"text": reference.name, "tokens": scored, "window": length, "base": before, "edited": after,
            "delta": after - before, "relative": after / before - 1}

"""The yardstick every trial of a tune is measured with: refusal on harmful prompts (a refusal marker anywhere in the
greedy answer) and damage on harmless ones (first-token or multi-token KL against the base model, and how often the
most likely first token stays the same). The base model's side (its logits, its continuations) is computed once.

An edit is applied as runtime hooks; a norm-preserving ablation, which no hook can carry, is folded into the loaded
weights and undone after, the same fold a merged export writes.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.activations.generate import greedy_generate
from steerfold.edit.edits import Edit
from steerfold.edit.fold import fold_model
from steerfold.edit.hooks import runtime_hooks
from steerfold.models.arch import layout_of_model
from steerfold.progress import silenced
from steerfold.prompts import PromptRecord
from steerfold.validation.behaviour import chat_texts
from steerfold.directions.selection import refusal_first_tokens, refusal_probability
from steerfold.validation.divergence import (continuations, first_token_comparison, kl_along, last_position_logits,
                                             replaying, runner)
from steerfold.validation.reasoning import DELIMITERS, answer_of
from steerfold.validation.refusal import DEFAULT_MARKERS, Markers

MULTI_TOKENS = 16  # tokens of the base model's continuation that multi-token KL reads


@dataclass(frozen=True)
class Measured:
    """One edit on one pair of prompt sets: on the harmful prompts, the probability that the first answer token opens
    one of the base model's own refusals and (when generated) how many answers hold a refusal marker; damage on the
    harmless ones."""

    harmful: int
    harmless: int
    refusal_probability: float
    kl_first_token: float
    top1_agreement: float
    refusals: int | None = None  # marker verdicts of the greedy answers; None when not generated
    kl_multi_token: float | None = None

    @property
    def refusal(self) -> float | None:
        """The share of harmful answers holding a refusal marker (None when not generated)."""
        return None if self.refusals is None else self.refusals / self.harmful if self.harmful else 0.0

    def objectives(self, refusal: str, damage: str) -> tuple[float, float]:
        """(refusal, damage) as the search minimises them."""
        chosen = self.refusal_probability if refusal == "probability" else self.refusal
        assert chosen is not None, "markers need generated answers"
        kl = self.kl_multi_token if damage == "multi-token-kl" and self.kl_multi_token is not None else self.kl_first_token
        return chosen, kl

    def as_dict(self) -> dict:
        return {**asdict(self), "refusal": self.refusal}


@contextmanager
def applied(model: PreTrainedModel, edit: Edit | None) -> Iterator[None]:
    """``edit`` in effect on ``model`` inside the block: runtime hooks, or for a map no hook carries (norm-preserving)
    a fold of the loaded weights, restored on the way out."""
    if edit is None:
        yield
        return
    if not any(m.not_a_write_map for m in edit.maps.values()):
        with runtime_hooks(model, edit):
            yield
        return
    with _restored_weights(model):
        fold_model(model, edit)
        yield


@contextmanager
def _restored_weights(model: PreTrainedModel) -> Iterator[None]:
    """Every residual writer's tensors, the output head and the tying flag put back as they were."""
    layout = layout_of_model(model)
    keys = [key for writer in layout.writers for key in [k for k, _ in writer.tensors] + ([writer.bias] if writer.bias else [])]
    saved = {key: model.get_parameter(key).detach().clone() for key in keys}
    head = model.get_submodule(layout.lm_head)
    head_weight, tied = head.weight, model.config.tie_word_embeddings
    try:
        yield
    finally:
        with torch.no_grad():
            for key, value in saved.items():
                model.get_parameter(key).copy_(value)
        head.weight, model.config.tie_word_embeddings = head_weight, tied


class Yardstick:
    """Measures edits of one model on one harmful and one harmless prompt set, the same way each time."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, harmful: Sequence[PromptRecord],
                 harmless: Sequence[PromptRecord], damage: str = "first-token-kl", max_new_tokens: int = 32,
                 system: str | None = None, batch_size: int = 32, markers: Markers = DEFAULT_MARKERS) -> None:
        self.model, self.tokenizer, self.damage, self.markers = model, tokenizer, damage, markers
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.harmful_texts = chat_texts(tokenizer, harmful, system)
        self.harmless_texts = chat_texts(tokenizer, harmless, system)
        self.base = replaying(runner(model))
        with silenced():
            self.refusal_tokens = refusal_first_tokens(model, tokenizer, harmful, system, batch_size)
            self.continuations = (continuations(model, tokenizer, self.harmless_texts, MULTI_TOKENS, batch_size)
                                  if damage == "multi-token-kl" else None)
            self.baseline = self.measure(None)  # also computes and keeps the base model's logits

    def measure(self, edit: Edit | None, generate: bool = True) -> Measured:
        """Refusal and damage with ``edit`` in effect (None: the base model); ``generate=False`` skips the greedy
        answers (and their marker verdicts), leaving the refusal probability."""
        with silenced(), applied(self.model, edit) if edit is not None else nullcontext():
            refusals = None
            if generate:
                answers = greedy_generate(self.model, self.tokenizer, self.harmful_texts, self.max_new_tokens,
                                          self.batch_size, keep=DELIMITERS)
                refusals = sum(self.markers.find(answer_of(answer)) is not None for answer in answers)
            edited = runner(self.model)
            opening = last_position_logits(edited, self.tokenizer, self.harmful_texts, self.batch_size)
            first = first_token_comparison(self.base, edited, self.tokenizer, self.harmless_texts, self.batch_size)
            multi = (float(kl_along(self.base, edited, self.continuations).mean())
                     if self.continuations is not None else None)
        return Measured(len(self.harmful_texts), len(self.harmless_texts),
                        float(refusal_probability(opening, self.refusal_tokens).mean()), float(first["kl"].mean()),
                        float(first["top1"].float().mean()), refusals, multi)

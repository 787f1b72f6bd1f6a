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

from steerfold.activations.capture import last_logits, prompt_batches
from steerfold.activations.generate import greedy_generate
from steerfold.edit.edits import Edit
from steerfold.edit.fold import fold_model
from steerfold.edit.hooks import runtime_hooks
from steerfold.models.arch import layout_of_model
from steerfold.models.loading import input_device
from steerfold.progress import silenced
from steerfold.prompts import PromptRecord
from steerfold.validation.behaviour import chat_texts
from steerfold.directions.selection import refusal_first_tokens, refusal_probability
from steerfold.validation.divergence import continuations, kl, kl_along, replaying, runner
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
    """Measures edits of one model on one harmful and one harmless prompt set, the same way each time. First-token
    measures run the prompts' shared chat prefix once per edit (``PromptBatches``)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, harmful: Sequence[PromptRecord],
                 harmless: Sequence[PromptRecord], damage: str = "first-token-kl", max_new_tokens: int = 32,
                 system: str | None = None, batch_size: int = 32, markers: Markers = DEFAULT_MARKERS) -> None:
        self.model, self.tokenizer, self.damage, self.markers = model, tokenizer, damage, markers
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.harmful_texts = chat_texts(tokenizer, harmful, system)
        harmless_texts = chat_texts(tokenizer, harmless, system)
        self.plans = {"harmful": prompt_batches(tokenizer, self.harmful_texts, batch_size),
                      "harmless": prompt_batches(tokenizer, harmless_texts, batch_size)}
        self.base = replaying(runner(model))
        with silenced():
            self.refusal_tokens = refusal_first_tokens(model, tokenizer, harmful, system, batch_size)
            self.base_harmless = self._last_logits("harmless")
            self.continuations = (continuations(model, tokenizer, harmless_texts, MULTI_TOKENS, batch_size)
                                  if damage == "multi-token-kl" else None)
            self.baseline = self.measure(None)

    @torch.no_grad()
    def _last_logits(self, name: str) -> torch.Tensor:
        """Last-position logits of one prompt set under whatever edit is in effect: [n, vocab], float32 on the CPU."""
        plan, device = self.plans[name], input_device(self.model)
        cache = plan.prefix_cache(self.model)
        return plan.gather([last_logits(self.model, plan.inputs(batch, cache, device)) for batch in plan.batches])

    def measure(self, edit: Edit | None, generate: bool = True) -> Measured:
        """Refusal and damage with ``edit`` in effect (None: the base model); ``generate=False`` skips the greedy
        answers (and their marker verdicts), leaving the refusal probability."""
        with silenced(), applied(self.model, edit) if edit is not None else nullcontext():
            refusals = None
            if generate:
                answers = greedy_generate(self.model, self.tokenizer, self.harmful_texts, self.max_new_tokens,
                                          self.batch_size, keep=DELIMITERS)
                refusals = sum(self.markers.find(answer_of(answer)) is not None for answer in answers)
            opening = self._last_logits("harmful")
            harmless = self._last_logits("harmless")
            multi = (float(kl_along(self.base, runner(self.model), self.continuations).mean())
                     if self.continuations is not None else None)
        same = (harmless.argmax(-1) == self.base_harmless.argmax(-1)).float().mean()
        return Measured(len(self.harmful_texts), harmless.shape[0],
                        float(refusal_probability(opening.unsqueeze(1), self.refusal_tokens).mean()),
                        float(kl(self.base_harmless, harmless).mean()), float(same), refusals, multi)

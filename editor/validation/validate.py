"""``steerfold validate``: behaviour of an edited model against its base on held-out prompts, in numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.edit.edits import Edit
from steerfold.validation.behaviour import chat_texts, refusal, respond
from steerfold.validation.divergence import first_token_kl, multi_token_kl, runner
from steerfold.prompts import PromptRecord

CoherenceCheck = Callable[[PromptRecord, str], bool]


@dataclass(frozen=True)
class EvalSets:
    """Held-out prompts the report is measured on."""

    harmful: Sequence[PromptRecord]
    harmless: Sequence[PromptRecord]


def behaviour(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: EvalSets,
    system: str | None = None,
    edit: Edit | None = None,
    coherence: CoherenceCheck | None = None,
    max_new_tokens: int = 48,
) -> tuple[dict, dict[str, list[str]]]:
    """Refusal rates (overall and by category) and, when a check is given, coherent compliance on harmful prompts."""
    harmful = respond(model, tokenizer, sets.harmful, system, edit, max_new_tokens)
    harmless = respond(model, tokenizer, sets.harmless, system, edit, max_new_tokens)
    harmful_rates, harmless_rates = refusal(harmful, sets.harmful), refusal(harmless, sets.harmless)
    summary = {
        "harmful_refusal": harmful_rates["overall"],
        "harmless_refusal": harmless_rates["overall"],
        "by_category": {**harmful_rates["by_category"], **harmless_rates["by_category"]},
    }
    if coherence is not None:
        summary["coherent_compliance"] = sum(coherence(r, text) for r, text in zip(sets.harmful, harmful)) / len(harmful)
    return summary, {"harmful": harmful, "harmless": harmless}


def validate(
    base_model: PreTrainedModel,
    edited_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: EvalSets,
    system: str | None = None,
    coherence: CoherenceCheck | None = None,
    max_new_tokens: int = 48,
    examples: int = 3,
) -> dict:
    """``before`` and ``after`` behaviour, KL on harmless prompts, and a few example responses."""
    before, before_text = behaviour(base_model, tokenizer, sets, system, coherence=coherence, max_new_tokens=max_new_tokens)
    after, after_text = behaviour(edited_model, tokenizer, sets, system, coherence=coherence, max_new_tokens=max_new_tokens)
    texts = chat_texts(tokenizer, sets.harmless, system)
    base, edited = runner(base_model), runner(edited_model)
    after["kl_first_token"] = float(first_token_kl(base, edited, tokenizer, texts).mean())
    after["kl_multi_token"] = float(multi_token_kl(base_model, base, edited, tokenizer, texts).mean())
    generations = {kind: [{"prompt": r.text, "category": r.category, "before": before_text[kind][i], "after": after_text[kind][i]}
                          for i, r in enumerate(records)]
                   for kind, records in (("harmful", sets.harmful), ("harmless", sets.harmless))}
    return {
        "system_prompt": system,
        "prompts": {"harmful": len(sets.harmful), "harmless": len(sets.harmless)},
        "categories": {kind: sorted({r.category for r in records if r.category})
                       for kind, records in (("harmful", sets.harmful), ("harmless", sets.harmless))},
        "before": before,
        "after": after,
        "examples": generations["harmful"][:examples],  # shown in report.md
        "generations": generations,  # every response, before and after
    }

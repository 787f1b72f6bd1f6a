"""``steerfold validate``: behaviour of an edited model against its base on held-out prompts, in numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.edit.edits import Edit
from steerfold.validation.behaviour import chat_texts, respond
from steerfold.validation.divergence import first_token_comparison, multi_token_kl, runner
from steerfold.validation.harness import harness_comparison
from steerfold.validation.options import DEFAULT_MAX_NEW_TOKENS, DamageChecks
from steerfold.validation.perplexity import context_length, perplexity_comparison
from steerfold.validation.rates import counted, counted_flags
from steerfold.validation.reasoning import answer_of, split_reasoning
from steerfold.validation.refusal import DEFAULT_MARKERS, Markers
from steerfold.prompts import PromptRecord

if TYPE_CHECKING:
    from steerfold.validation.judging import VerdictJudge

CoherenceCheck = Callable[[PromptRecord, str], bool]


@dataclass(frozen=True)
class EvalSets:
    """Held-out prompts the report is measured on; ``over_refusal``: safe requests that look unsafe (optional)."""

    harmful: Sequence[PromptRecord]
    harmless: Sequence[PromptRecord]
    over_refusal: Sequence[PromptRecord] = ()

    def named(self) -> list[tuple[str, Sequence[PromptRecord]]]:
        """(name, records) of every set given, in report order."""
        sets = [("harmful", self.harmful), ("harmless", self.harmless), ("over_refusal", self.over_refusal)]
        return [(name, records) for name, records in sets if records or name != "over_refusal"]


def behaviour(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: EvalSets,
    system: str | None = None,
    edit: Edit | None = None,
    coherence: CoherenceCheck | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    markers: Markers = DEFAULT_MARKERS,
    thinking: bool | None = None,
) -> tuple[dict, dict[str, list[str]]]:
    """Refusal rates (overall and by category) and, when a check is given, coherent compliance on harmful prompts;
    ``intervals`` holds each rate's count, number of prompts and 95% Wilson interval."""
    texts, summary, intervals = {}, {"by_category": {}}, {"by_category": {}}
    for kind, records in sets.named():
        texts[kind] = respond(model, tokenizer, records, system, edit, max_new_tokens, thinking=thinking)
        flags = [markers.find(answer_of(text)) is not None for text in texts[kind]]
        counts = counted_flags(flags, [r.category for r in records])
        summary.setdefault("unfinished", {})[kind] = sum(unfinished(text) for text in texts[kind])
        metric = "over_refusal" if kind == "over_refusal" else f"{kind}_refusal"
        summary[metric], intervals[metric] = counts["overall"]["rate"] or 0.0, counts["overall"]
        if kind == "over_refusal":  # its own rate: its categories are not harm categories
            intervals["over_refusal_by_category"] = counts["by_category"]
            continue
        summary["by_category"].update({c: e["rate"] for c, e in counts["by_category"].items()})
        intervals["by_category"].update(counts["by_category"])
    if coherence is not None:
        entry = counted(sum(coherence(r, text) for r, text in zip(sets.harmful, texts["harmful"])), len(sets.harmful))
        summary["coherent_compliance"], intervals["coherent_compliance"] = entry["rate"], entry
    summary["intervals"] = intervals
    return summary, texts


def unfinished(text: str) -> bool:
    """Whether a response ran out of tokens inside its reasoning block (it has reasoning and no answer)."""
    parts = split_reasoning(text)
    return bool(parts.reasoning) and not parts.answer


def response_rows(sets: EvalSets, before: dict[str, list[str]], after: dict[str, list[str]], markers: Markers,
                  coherence: CoherenceCheck | None = None) -> list[dict]:
    """One row per prompt and set: the base and edited responses and the verdict of each (``refusal`` with the
    marker found, ``compliance``, or ``no_answer`` when the tokens ran out inside a reasoning block; reasoning blocks
    are kept in the response, verdicts read the answer) and, on harmful prompts with a check, coherent compliance."""
    rows = []
    for kind, records in sets.named():
        for i, record in enumerate(records):
            row = {"set": kind, "prompt": record.text, "category": record.category}
            for side, texts in (("base", before), ("edited", after)):
                text = texts[kind][i]
                marker = markers.find(answer_of(text))
                verdict = "refusal" if marker else "no_answer" if unfinished(text) else "compliance"
                row.update({f"{side}_response": text, f"{side}_verdict": verdict, f"{side}_marker": marker})
                if coherence is not None and kind == "harmful":
                    row[f"{side}_coherent"] = bool(coherence(record, text))
            rows.append(row)
    return rows


def damage_beyond_kl(base_model: PreTrainedModel, edited_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     damage: DamageChecks) -> dict:
    """What ``damage`` asks beyond KL, each on both models with its change: the reference text's perplexity
    (``perplexity``) and lm-evaluation-harness metrics (``lm_eval``)."""
    found = {}
    if damage.reference is not None:
        found["perplexity"] = perplexity_comparison(runner(base_model), runner(edited_model), tokenizer, damage.reference,
                                                    context_length(base_model))
    if damage.lm_eval_tasks:
        found["lm_eval"] = harness_comparison(base_model, edited_model, tokenizer, damage.lm_eval_tasks, damage.lm_eval_limit)
    return found


def validate(
    base_model: PreTrainedModel,
    edited_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sets: EvalSets,
    system: str | None = None,
    coherence: CoherenceCheck | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    examples: int = 3,
    markers: Markers = DEFAULT_MARKERS,
    judge: "VerdictJudge | None" = None,
    thinking: bool | None = None,
    damage: DamageChecks = DamageChecks(),
) -> dict:
    """``before`` and ``after`` behaviour, KL on harmless prompts, a few example responses, every response with its
    verdicts (``responses``, written to responses.jsonl beside the report), with a ``judge`` its verdicts, rates,
    agreement with the markers and calibration (``judge``), and the ``damage`` checks asked for."""
    measured = dict(system=system, coherence=coherence, max_new_tokens=max_new_tokens, markers=markers, thinking=thinking)
    before, before_text = behaviour(base_model, tokenizer, sets, **measured)
    after, after_text = behaviour(edited_model, tokenizer, sets, **measured)
    texts = chat_texts(tokenizer, sets.harmless, system, thinking)
    base, edited = runner(base_model), runner(edited_model)
    first = first_token_comparison(base, edited, tokenizer, texts)
    after["kl_first_token"] = float(first["kl"].mean())
    after["intervals"]["top1_agreement"] = counted(int(first["top1"].sum()), len(texts))
    after["top1_agreement"] = after["intervals"]["top1_agreement"]["rate"]
    after["kl_multi_token"] = float(multi_token_kl(base_model, base, edited, tokenizer, texts).mean())
    rows = response_rows(sets, before_text, after_text, markers, coherence)
    judged = {}
    if judge is not None:
        from steerfold.validation.judging import judge_responses

        judged["judge"] = judge_responses(judge, rows, markers)
    return {
        **judged,
        **damage_beyond_kl(base_model, edited_model, tokenizer, damage),
        "system_prompt": system,
        "thinking": {None: "auto", True: "on", False: "off"}[thinking],
        "max_new_tokens": max_new_tokens,
        "prompts": {name: len(records) for name, records in sets.named()},
        "categories": {kind: sorted({r.category for r in records if r.category})
                       for kind, records in (("harmful", sets.harmful), ("harmless", sets.harmless))},
        "before": before,
        "after": after,
        "examples": [{"prompt": r["prompt"], "category": r["category"], "before": r["base_response"],
                      "after": r["edited_response"]} for r in rows if r["set"] == "harmful"][:examples],  # in report.md
        "responses": rows,  # every response, before and after, with its verdicts
    }

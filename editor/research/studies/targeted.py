"""Study: targeted control of refusal, one topic at a time.

Removal of one refused category's refusal (``remove``, default politics), two ways: ablate the category's own
component (its refusal direction orthogonal to the other harm categories') from the writers of every layer index
where it is not zero; or apply the conditional rank-1 map ``w ↦ w + α (ĉ · w) r̂`` with α < 0, which takes the
refusal direction r away from each write in proportion to its reading of the category's condition c. That
category's refusal should go while every other harmful category keeps its own. Induction: the same map with α > 0
adds r where one harmless category's (``induce``) condition is present; it should become refused while the other
harmless categories stay answered.

r is, per layer index, the harmful training prompts' mean state minus the harmless ones' (``refusal_direction:
diff_in_means``), or the ridge-regularised direction fitted against the model's own refusal confidence
(``ridge``: each training prompt weighted by how surely its greedy response shows its side's behaviour, as read by
refusal markers; the Refusal Steering recipe, with markers in place of an LLM judge). A category's condition
c is its mean state minus the mean of the other categories' means (of the same kind of prompt), made orthogonal
to that mean so it reads about zero on their typical state. Each α comes from validation prompts: of those that
keep the other categories acceptable (no harmful category falls by more than ``max_drop``; no other harmless one
refused ``max_others_refused`` above its own rate), the one that moves the category furthest. It is then measured
on held-out prompts. "Stays refused" is relative (a share of the category's refusal before the edit), so the claims
read the same on a model that refuses every harmful prompt and on one that refuses half.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

from steerfold.directions.methods.contrast import Contrast
from steerfold.directions.methods.estimators import ridge_direction
from steerfold.directions.methods.scorers import confidence_weights, marker_scorer, refusal_confidence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from steerfold.edit.edits import Edit, conditional_edit
from steerfold.directions.methods.contrast import orthogonal_to
from steerfold.errors import BadInput
from steerfold.prompts import PromptRecord
from steerfold.research.studies import Claim, StudyResult
from steerfold.research.studies.categories import own_ablation, training_directions, training_states
from steerfold.research.studies.common import category_means, live_layers, refusal_rates
from steerfold.research.studies.inputs import StudyInputs


class TargetedSpec(BaseModel):
    """Recipe parameters of the targeted-control study."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["targeted-control"]
    remove: str = Field(default="politics", description="a harmful category whose refusal to remove")
    induce: str = Field(default="crafts", description="a harmless category to make refused")
    alphas: tuple[float, ...] = Field(default=(0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 16.0), min_length=1,
                                      description="strengths to try on validation: removal uses −α, induction α")
    max_removed: float = Field(default=0.1, ge=0, le=1)
    max_drop: float = Field(default=0.05, ge=0, le=1, description="validation: how far another harmful category may fall")
    min_harmful_kept: float = Field(default=0.95, ge=0, le=1, description="share of its refusal every other harmful category keeps")
    min_induced: float = Field(default=0.8, ge=0, le=1)
    max_others_refused: float = Field(default=0.05, ge=0, le=1, description="refusal points another harmless category may gain")
    refusal_direction: Literal["diff_in_means", "ridge"] = Field(default="diff_in_means", description="the r the map moves along")
    ridge_lambda: float = Field(default=1.0, gt=0, description="ridge: λ in units of the mean activation variance")

    def check(self, inputs: StudyInputs, depth: int) -> None:
        """``remove`` and ``induce`` name categories of the study's harmful and harmless prompts."""
        for key, kind in (("remove", "harmful"), ("induce", "harmless")):
            known = inputs.categories(kind)
            if getattr(self, key) not in known:
                raise BadInput(f"study.{key}: '{getattr(self, key)}' is not a category of the {kind} prompts: "
                               f"name one of {', '.join(known)}")

    @field_validator("alphas")
    @classmethod
    def positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not all(a > 0 for a in value):
            raise ValueError("alphas are the strengths to try: positive numbers, e.g. [0.5, 1, 2]")
        return value


def category_condition(states: torch.Tensor, records: Sequence[PromptRecord], name: str) -> torch.Tensor:
    """Per layer index: category ``name``'s mean state minus the mean of the other categories' means, with its
    component along that mean removed, so it reads about zero on the other categories' typical state: [L+1, d]."""
    means = category_means(states, records)
    others = torch.stack([m for n, m in means.items() if n != name]).mean(dim=0)
    return orthogonal_to(means[name] - others, others)


def chosen_alpha(scores: dict[float, tuple[float, float]], higher_is_better: bool, acceptable: Callable[[float], bool]) -> float:
    """Of the α whose validation scores ``(own rate, others' figure)`` leave the others acceptable, the one that moves
    its own category furthest (the smallest on a tie); the smallest α when none does."""
    fits = [a for a, (_, others) in scores.items() if acceptable(others)]
    sign = 1 if higher_is_better else -1
    return max(fits, key=lambda a: (sign * scores[a][0], -a)) if fits else min(scores)


Rates = Callable[[Sequence[PromptRecord], "Edit | None"], dict[str, float]]


def tuned_conditional(rates: Rates, inputs: StudyInputs, refusal: torch.Tensor, alphas: Sequence[float], kind: str,
                      states: torch.Tensor, name: str, sign: int, others_figure: Callable[[dict], float],
                      acceptable: Callable[[float], bool]) -> tuple[float, dict, dict[str, float]]:
    """The conditional map on ``name``'s condition with strength sign·α, α chosen on ``kind``'s validation prompts:
    (α, the validation scores, refusal by category on the held-out prompts)."""
    condition = category_condition(states, inputs.records(kind, "train"), name)

    def score(alpha: float) -> tuple[float, float]:
        after = rates(inputs.records(kind, "val"), conditional_edit(condition, refusal, live_layers(condition), sign * alpha))
        return after[name], others_figure(after)

    scores = {alpha: score(alpha) for alpha in alphas}
    alpha = chosen_alpha(scores, sign > 0, acceptable)
    edit = conditional_edit(condition, refusal, live_layers(condition), sign * alpha)
    return alpha, scores, rates(inputs.records(kind, "test"), edit)


def refusal_vectors(model, tokenizer, spec: TargetedSpec, inputs: StudyInputs, harmful: torch.Tensor,
                    harmless: torch.Tensor) -> torch.Tensor:
    """r per layer index ([L+1, d]): the difference of means, or the ridge direction weighted by the base model's
    marker-read refusal confidence in its own responses to the training prompts."""
    if spec.refusal_direction == "diff_in_means":
        return harmful.mean(dim=0) - harmless.mean(dim=0)
    confidence = [refusal_confidence(model, tokenizer, inputs.records(kind, "train"), marker_scorer,
                                     max_new_tokens=inputs.max_new_tokens) for kind in ("harmful", "harmless")]
    weights = confidence_weights(confidence[0], True), confidence_weights(confidence[1], False)
    return torch.stack([ridge_direction(Contrast(harmful[:, layer], harmless[:, layer], *weights), spec.ridge_lambda).direction
                        for layer in range(harmful.shape[1])]).to(torch.float32)


def kept_share(before: dict[str, float], after: dict[str, float], skip: str) -> float:
    """The smallest share of its refusal any category but ``skip`` keeps (categories never refused left out)."""
    shares = [after[n] / before[n] for n in after if n != skip and before.get(n, 0) > 0]
    return min(shares, default=1.0)


def largest_rise(before: dict[str, float], after: dict[str, float], skip: str) -> float:
    """The most refusal points any category but ``skip`` gained."""
    return max((after[n] - before.get(n, 0.0) for n in after if n != skip), default=0.0)


def run(model, tokenizer, spec: TargetedSpec, inputs: StudyInputs) -> StudyResult:
    harmful_states, harmless_states = training_states(model, tokenizer, inputs)
    directions = training_directions(harmful_states, harmless_states, inputs)
    refusal = refusal_vectors(model, tokenizer, spec, inputs, harmful_states, harmless_states)
    harmful_test, harmless_test = inputs.records("harmful", "test"), inputs.records("harmless", "test")

    def rates(records: Sequence[PromptRecord], edit: Edit | None = None) -> dict[str, float]:
        return refusal_rates(model, tokenizer, records, edit=edit, max_new_tokens=inputs.max_new_tokens)["by_category"]

    removed_before, induced_before = rates(harmful_test), rates(harmless_test)
    ablated = rates(harmful_test, own_ablation(directions, spec.remove))

    # Removal: the conditional map with α < 0 takes refusal away where the category's condition is present.
    val_before = rates(inputs.records("harmful", "val"))
    removal_alpha, removal_scores, removed = tuned_conditional(
        rates, inputs, refusal, spec.alphas, "harmful", harmful_states, spec.remove, -1,
        lambda after: max((val_before[n] - after[n] for n in after if n != spec.remove), default=0.0),
        lambda largest_drop: largest_drop <= spec.max_drop)
    # Induction: the same map with α > 0 adds refusal where one harmless category's condition is present.
    harmless_val_before = rates(inputs.records("harmless", "val"))
    induction_alpha, induction_scores, induced = tuned_conditional(
        rates, inputs, refusal, spec.alphas, "harmless", harmless_states, spec.induce, 1,
        lambda after: largest_rise(harmless_val_before, after, spec.induce),
        lambda rise: rise <= spec.max_others_refused)
    claims = targeted_claims(spec, (removed_before, induced_before), ablated, (removal_alpha, removed),
                             (induction_alpha, induced))
    columns = [*removed_before, *induced_before]
    rows = [("none", {**removed_before, **induced_before}), (f"ablate {spec.remove} own component", ablated),
            (f"conditional map on {spec.remove}, α = −{removal_alpha:g}", removed),
            (f"conditional map on {spec.induce}, α = {induction_alpha:g}", induced)]
    table = [{"edit": edit, **{n: after.get(n, "") for n in columns}} for edit, after in rows]
    validation = {
        "removal": {f"alpha -{a:g}": {spec.remove: s[0], "others_largest_drop": s[1]} for a, s in removal_scores.items()},
        "induction": {f"alpha {a:g}": {spec.induce: s[0], "others_largest_rise": s[1]} for a, s in induction_scores.items()},
    }
    return StudyResult("Targeted control: remove one topic's refusal, induce refusal on another", claims, table,
                       {"validation": validation, "prompts": inputs.counts()})


def targeted_claims(spec: TargetedSpec, before: tuple[dict, dict], ablated: dict, removal: tuple[float, dict],
                    induction: tuple[float, dict]) -> list[Claim]:
    """The removal claims (own-component ablation, conditional map) and the induction claim, from measured rates."""
    removed_before, induced_before = before

    def removal_claim(method: str, after: dict[str, float], extra: dict[str, float]) -> Claim:
        kept = kept_share(removed_before, after, spec.remove)
        return Claim(f"{method} removes {spec.remove} refusal (from above {100 * spec.max_removed:.0f}% to "
                     f"≤ {100 * spec.max_removed:.0f}%) while every other harmful category keeps "
                     f"≥ {100 * spec.min_harmful_kept:.0f}% of its refusal",
                     removed_before[spec.remove] > spec.max_removed >= after[spec.remove] and kept >= spec.min_harmful_kept,
                     {f"{spec.remove}_before": removed_before[spec.remove], f"{spec.remove}_after": after[spec.remove],
                      "harmful_min_after": min(v for n, v in after.items() if n != spec.remove), "others_min_kept": kept,
                      **extra})

    (removal_alpha, removed), (induction_alpha, induced) = removal, induction
    rise = largest_rise(induced_before, induced, spec.induce)
    return [
        removal_claim(f"Ablating the {spec.remove} direction's own component", ablated, {}),
        removal_claim(f"The conditional map with α = −{removal_alpha:g} (chosen on validation prompts) on the "
                      f"{spec.remove} condition", removed, {"alpha": -removal_alpha}),
        Claim(f"The conditional map with α = {induction_alpha:g} (chosen on validation prompts) on the {spec.induce} "
              f"condition makes {spec.induce} refused (≥ {100 * spec.min_induced:.0f}%) while every other harmless "
              f"category stays answered (≤ {100 * spec.max_others_refused:.0f} points more refused)",
              induced[spec.induce] >= spec.min_induced and rise <= spec.max_others_refused,
              {f"{spec.induce}_before": induced_before[spec.induce], f"{spec.induce}_after": induced[spec.induce],
               "others_max_after": max(v for n, v in induced.items() if n != spec.induce), "others_largest_rise": rise,
               "alpha": induction_alpha}),
    ]

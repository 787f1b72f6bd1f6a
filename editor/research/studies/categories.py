"""Study: refusal varies by harm category, and each category's own direction controls its own refusal.

Per-category directions (category mean minus harmless mean at the last prompt token, every layer index) and
their cosine matrix; then, for each category, the part of its direction orthogonal to the other categories'
("its own component") is ablated from every writer, and refusal is measured per category on held-out prompts.
The report adds the lowest cosine at every post-instruction position, to show where category information sits.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from steerfold.activations.capture import post_instruction_positions
from steerfold.edit.edits import Edit, ablation_edit
from steerfold.directions.methods.categories import category_directions, category_similarity
from steerfold.research.studies.inputs import StudyInputs
from steerfold.research.studies import Claim, StudyResult
from steerfold.research.studies.common import last_token_states, live_layers, position_states, own_component, refusal_rates


class CategoriesSpec(BaseModel):
    """Recipe parameters of the harm-category study."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["harm-categories"]
    max_cosine: float = Field(default=0.9, ge=-1, le=1, description="categories differ when some pair's cosine is below this")
    max_removed: float = Field(default=0.1, ge=0, le=1, description="refusal left in the ablated category")
    min_kept: float = Field(default=0.9, ge=0, le=1, description="refusal every other category keeps")


def training_states(model, tokenizer, inputs: StudyInputs, position: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """States of the harmful and the harmless training prompts at one prompt position (default the last token),
    each [n, L+1, d]."""
    return tuple(last_token_states(model, tokenizer, inputs.records(kind, "train"), position=position)
                 for kind in ("harmful", "harmless"))


def training_directions(harmful_states: torch.Tensor, harmless_states: torch.Tensor,
                        inputs: StudyInputs) -> dict[str, torch.Tensor]:
    """Each harmful category's difference of means against the harmless training prompts, [L+1, d] per category."""
    categories = [r.category for r in inputs.records("harmful", "train")]
    return category_directions(harmful_states, categories, harmless_states)


def own_ablation(directions: dict, name: str) -> Edit:
    """Ablate category ``name``'s own component, layer by layer, from the writers of every live layer."""
    own = own_component(directions, name)
    return ablation_edit(own, live_layers(own))


def run(model, tokenizer, spec: CategoriesSpec, inputs: StudyInputs) -> StudyResult:
    directions = training_directions(*training_states(model, tokenizer, inputs), inputs)
    names = list(directions)
    similarity = category_similarity(directions)
    test = inputs.records("harmful", "test")
    rates = lambda edit=None: refusal_rates(model, tokenizer, test, edit=edit, max_new_tokens=inputs.max_new_tokens)  # noqa: E731
    base = rates()["by_category"]
    table = [{"ablated": "none", **{n: base[n] for n in names}}]
    layers = live_layers(next(iter(directions.values())))
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    lowest = min(float(similarity[layer, i, j]) for layer in layers for i, j in pairs)
    claims = [Claim(f"Per-category refusal directions differ: some pair has cosine below "
                    f"{spec.max_cosine:g} at some layer index", lowest < spec.max_cosine, {"lowest_cosine": lowest})]
    for name in names:
        after = rates(own_ablation(directions, name))["by_category"]
        table.append({"ablated": f"{name} (own component)", **{n: after[n] for n in names}})
        others = {n: after[n] for n in names if n != name}
        kept = min(after[n] / base[n] for n in others if base[n] > 0) if any(base[n] > 0 for n in others) else 1.0
        claims.append(Claim(
            f"Ablating the {name} direction's own component removes {name} refusal (from above "
            f"{100 * spec.max_removed:.0f}% to ≤ {100 * spec.max_removed:.0f}%) while every other category keeps "
            f"≥ {100 * spec.min_kept:.0f}% of its refusal",
            base[name] > spec.max_removed >= after[name] and kept >= spec.min_kept,
            {f"{name}_before": base[name], f"{name}_after": after[name], "others_min_after": min(others.values()),
             "others_min_kept": kept},
        ))
    cosines = [{"categories": f"{names[i]} · {names[j]}", **{f"layer {layer}": float(similarity[layer, i, j]) for layer in layers}}
               for i, j in pairs]
    return StudyResult("Harm categories: per-category directions and their own components", claims, table,
                       {"categories": names, "prompts": inputs.counts()}, {"Cosine between per-category directions": cosines,
                                               "Lowest cosine at each post-instruction position": by_position(model, tokenizer, inputs)})


def by_position(model, tokenizer, inputs: StudyInputs) -> list[dict[str, object]]:
    """The lowest cosine between any two per-category directions, per layer index, at every post-instruction
    position (the claim above reads the last one, where the refusal direction is fitted and read)."""
    rows, positions = [], post_instruction_positions(tokenizer)
    harmful, harmless = (position_states(model, tokenizer, inputs.records(kind, "train"), positions)
                         for kind in ("harmful", "harmless"))
    for p, position in enumerate(positions):
        directions = training_directions(harmful[:, :, p], harmless[:, :, p], inputs)
        similarity = category_similarity(directions)
        off_diagonal = ~torch.eye(similarity.shape[-1], dtype=torch.bool)
        layers = live_layers(next(iter(directions.values())))
        rows.append({"position": position, **{f"layer {layer}": float(similarity[layer][off_diagonal].min()) for layer in layers}})
    return rows

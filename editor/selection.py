"""Choosing the refusal direction among (position, layer) candidates, the selection of Arditi et al. (2024).

For each candidate difference-in-means vector r:

- bypass score: refusal rate on validation harmful prompts with r ablated from every residual writer;
- induce score: refusal rate on validation harmless prompts with r added at the candidate's layer;
- KL: first-token KL(base ‖ ablated) on validation harmless prompts.

Candidates in the last ``1 - max_layer_fraction`` of layers, those whose ablation moves harmless behaviour by
more than ``max_kl``, and those whose addition induces no refusal are filtered out; the lowest bypass score wins
(ties: lower KL). The whole table is returned so it can be recorded in the direction file and the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor.edits import ablation_edit, steering_edit
from editor.errors import SteerfoldError
from editor.evaluate.behaviour import chat_texts, refusal, respond
from editor.evaluate.divergence import first_token_kl, runner
from editor.prompts import PromptRecord


@dataclass
class Candidate:
    """One row of the selection table."""

    position: int
    layer: int
    bypass: float
    induce: float
    kl: float
    norm: float
    kept: bool = False
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SelectionSettings:
    """Filters and scoring budget of the selection."""

    max_layer_fraction: float = 0.8
    max_kl: float = 0.1
    min_induce: float = 0.0
    max_new_tokens: int = 12
    batch_size: int = 32


def score_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    diffs: torch.Tensor,
    positions: list[int],
    layers: list[int],
    harmful: Sequence[PromptRecord],
    harmless: Sequence[PromptRecord],
    settings: SelectionSettings = SelectionSettings(),
    system: str | None = None,
) -> list[Candidate]:
    """Bypass, induce and KL scores of every candidate ``diffs[p, i]`` (position ``positions[p]``, ``layers[i]``)."""
    num_layers = model.config.num_hidden_layers
    all_layers = range(num_layers + 1)
    base = runner(model)
    harmless_texts = chat_texts(tokenizer, harmless, system)
    table: list[Candidate] = []
    for p, position in enumerate(positions):
        for i, layer in enumerate(layers):
            vector = diffs[p, i]
            if not torch.isfinite(vector).all() or vector.norm() == 0:
                table.append(Candidate(position, layer, 1.0, 0.0, float("inf"), 0.0, reason="zero difference"))
                continue
            ablate = ablation_edit(vector, all_layers)
            add = steering_edit(vector, [layer])
            gen = dict(system=system, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
            bypass = refusal(respond(model, tokenizer, harmful, edit=ablate, **gen), harmful)["overall"]
            induce = refusal(respond(model, tokenizer, harmless, edit=add, **gen), harmless)["overall"]
            kl = first_token_kl(base, runner(model, ablate), tokenizer, harmless_texts, settings.batch_size).mean()
            table.append(Candidate(position, layer, bypass, induce, float(kl), float(vector.norm())))
    return table


def choose(table: list[Candidate], num_layers: int, settings: SelectionSettings = SelectionSettings()) -> Candidate:
    """Apply the filters, mark each row kept or why not, and return the winner."""
    for row in table:
        if row.reason:
            continue
        if row.layer >= settings.max_layer_fraction * num_layers:
            row.reason = f"layer ≥ {settings.max_layer_fraction:g}·L"
        elif row.kl > settings.max_kl:
            row.reason = f"KL {row.kl:.3f} > {settings.max_kl:g}"
        elif row.induce <= settings.min_induce:
            row.reason = "adding it induces no refusal"
        else:
            row.kept = True
    kept = [row for row in table if row.kept]
    if not kept:
        raise SteerfoldError(
            "no candidate direction passed the filters (see the table in the report): "
            "use more or cleaner prompts, or relax --max-kl"
        )
    best = min(kept, key=lambda row: (row.bypass, row.kl))
    best.reason = "chosen"
    return best

"""Choosing the refusal direction among (position, layer) candidates, the selection of Arditi et al. (2024).

Scores use the refusal score of Arditi et al.: the probability that the first response token is one that opens
a refusal (the set of first tokens of the base model's own refusals on the validation harmful prompts). For each
candidate difference-in-means vector r:

- bypass score: mean refusal-token probability on validation harmful prompts with r ablated everywhere;
- induce score: mean refusal-token probability on validation harmless prompts with r added at its layer;
- KL: first-token KL(base ‖ ablated) on validation harmless prompts.

Candidates in the last ``1 - max_layer_fraction`` of layers, those whose ablation moves harmless behaviour by more
than ``max_kl``, and those whose addition does not raise the refusal score above the base's are filtered out; the
lowest bypass score wins (ties: lower KL). One forward pass per prompt set and candidate, no generation: the
chosen direction is then checked by generation in validation. The whole table is kept for the file and report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.edit.edits import ablation_edit, steering_edit
from steerfold.errors import SteerfoldError
from steerfold.activations.capture import encode, left_padded, text_batches
from steerfold.validation.behaviour import chat_texts
from steerfold.validation.divergence import Runner, kl, runner
from steerfold.validation.refusal import is_refusal
from steerfold.activations.generate import greedy_ids
from steerfold.progress import progress
from steerfold.prompts import PromptRecord


@dataclass
class Candidate:
    """One row of the selection table."""

    position: int
    layer: int
    bypass: float | None  # refusal score on harmful prompts, direction ablated (None: not scored)
    induce: float | None  # refusal score on harmless prompts, direction added at its layer
    kl: float | None
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
    batch_size: int = 32


@torch.no_grad()
def refusal_first_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, harmful: Sequence[PromptRecord], system: str | None = None
) -> list[int]:
    """Ids of the first generated token of the base model's own refusals of ``harmful`` (greedy, marker-detected)."""
    first: set[int] = set()
    for inputs, _ in text_batches(tokenizer, chat_texts(tokenizer, harmful, system), 32, torch.device("cpu")):
        for row in greedy_ids(model, tokenizer, inputs, max_new_tokens=8):
            if is_refusal(tokenizer.decode(row, skip_special_tokens=True)):
                first.add(int(row[0]))
    if not first:
        raise SteerfoldError(
            "the model refuses none of the validation harmful prompts: there is no refusal to remove "
            "(check --system and the chat template, or use prompts it refuses)"
        )
    return sorted(first)


def refusal_probability(logits: torch.Tensor, refusal_tokens: list[int]) -> torch.Tensor:
    """Probability mass of the refusal tokens at the first response position, per prompt."""
    return logits[:, -1].softmax(-1)[:, refusal_tokens].sum(-1)


@torch.no_grad()
def _last_logits(run: Runner, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int) -> torch.Tensor:
    rows = []
    with left_padded(tokenizer):
        for start in range(0, len(texts), batch_size):
            rows.append(run(encode(tokenizer, texts[start : start + batch_size], torch.device("cpu")))[:, -1:])
    return torch.cat(rows)


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
) -> tuple[list[Candidate], dict]:
    """Bypass, induce and KL of every candidate ``diffs[p, i]``; also the base scores they are compared with."""
    all_layers = range(model.config.num_hidden_layers + 1)
    refusal_tokens = refusal_first_tokens(model, tokenizer, harmful, system)
    harmful_texts, harmless_texts = chat_texts(tokenizer, harmful, system), chat_texts(tokenizer, harmless, system)
    base_harmful = _last_logits(runner(model), tokenizer, harmful_texts, settings.batch_size)
    base_harmless = _last_logits(runner(model), tokenizer, harmless_texts, settings.batch_size)
    baseline = {
        "harmful_refusal_score": float(refusal_probability(base_harmful, refusal_tokens).mean()),
        "harmless_refusal_score": float(refusal_probability(base_harmless, refusal_tokens).mean()),
        "refusal_tokens": tokenizer.convert_ids_to_tokens(refusal_tokens),
    }
    table: list[Candidate] = []
    grid = [(p, position, i, layer) for p, position in enumerate(positions) for i, layer in enumerate(layers)]
    for p, position, i, layer in progress(grid, "scoring candidate directions"):
        vector = diffs[p, i]
        if not torch.isfinite(vector).all() or vector.norm() == 0:
            table.append(Candidate(position, layer, None, None, None, 0.0, reason="zero difference"))
            continue
        ablated = runner(model, ablation_edit(vector, all_layers))
        added = runner(model, steering_edit(vector, [layer]))
        bypass = refusal_probability(_last_logits(ablated, tokenizer, harmful_texts, settings.batch_size), refusal_tokens)
        ablated_harmless = _last_logits(ablated, tokenizer, harmless_texts, settings.batch_size)
        induce = refusal_probability(_last_logits(added, tokenizer, harmless_texts, settings.batch_size), refusal_tokens)
        kl_value = kl(base_harmless[:, -1], ablated_harmless[:, -1]).mean()
        table.append(Candidate(position, layer, float(bypass.mean()), float(induce.mean()), float(kl_value),
                               float(vector.norm())))
    return table, baseline


def choose(
    table: list[Candidate], num_layers: int, settings: SelectionSettings = SelectionSettings(), min_induce: float = 0.0
) -> Candidate:
    """Apply the filters (``min_induce``: the base's harmless refusal score), mark each row, return the winner."""
    only_kl: list[Candidate] = []
    for row in table:
        if row.reason:
            continue
        failures = []
        if row.layer >= settings.max_layer_fraction * num_layers:
            failures.append(f"layer ≥ {settings.max_layer_fraction:g}·L")
        if row.kl > settings.max_kl:
            failures.append(f"KL {row.kl:.3f} > {settings.max_kl:g}")
        if row.induce <= min_induce:
            failures.append("adding it does not raise the refusal score")
        row.kept, row.reason = not failures, "; ".join(failures)
        if len(failures) == 1 and failures[0].startswith("KL"):
            only_kl.append(row)
    kept = [row for row in table if row.kept]
    if not kept:  # relax the KL filter alone, and say so, rather than stop with nothing
        kept = only_kl
        if not kept:
            raise SteerfoldError(
                "no candidate direction passed the filters (see the table in the report): "
                "use more or cleaner prompts, or relax --max-kl"
            )
        best = min(kept, key=lambda row: (row.bypass, row.kl))
        best.reason = f"chosen (no candidate met KL ≤ {settings.max_kl:g}: KL filter relaxed)"
        return best
    best = min(kept, key=lambda row: (row.bypass, row.kl))
    best.reason = "chosen"
    return best

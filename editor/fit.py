"""The ``steerfold fit`` jobs: prompts in, a direction file (with its provenance) out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from editor.activations import at_positions, capture, post_instruction_positions
from editor.directions import DirectionFile
from editor.evaluate.behaviour import chat_texts
from editor.methods import difference_in_means, persona_vector
from editor.prompts import PromptRecord
from editor.selection import Candidate, SelectionSettings, choose, score_candidates

VERSION = "0.1.0"


def prompt_hash(records: Sequence[PromptRecord]) -> str:
    """Short content hash of a prompt set (texts and categories), recorded as provenance."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.category or ''}\t{record.text}\n".encode())
    return digest.hexdigest()[:16]


def split_for_validation(records: Sequence[PromptRecord], fraction: float = 0.25) -> tuple[list, list]:
    """Deterministic split: every k-th prompt goes to validation (keeps categories balanced)."""
    step = max(2, round(1 / fraction))
    train = [r for i, r in enumerate(records) if i % step != step - 1]
    val = [r for i, r in enumerate(records) if i % step == step - 1]
    return train, val


@dataclass
class RefusalFit:
    """The fitted refusal direction file and the selection table behind it."""

    file: DirectionFile
    table: list[Candidate]
    baseline: dict  # base refusal scores the candidates are compared with, and the refusal tokens
    chosen: Candidate
    candidates: torch.Tensor  # [P, L+1, d] difference of means at every candidate


def fit_refusal_direction(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harmful: Sequence[PromptRecord],
    harmless: Sequence[PromptRecord],
    harmful_val: Sequence[PromptRecord],
    harmless_val: Sequence[PromptRecord],
    settings: SelectionSettings = SelectionSettings(),
    system: str | None = None,
    model_name: str = "",
) -> RefusalFit:
    """Difference of means at every post-instruction position and layer, then the Arditi et al. selection."""
    num_layers = model.config.num_hidden_layers
    layers = list(range(num_layers + 1))
    positions = post_instruction_positions(tokenizer, system)
    diffs = difference_in_means(
        model, tokenizer, chat_texts(tokenizer, harmful, system), chat_texts(tokenizer, harmless, system),
        layers, positions, settings.batch_size,
    )
    scored_layers = [layer for layer in layers if layer < settings.max_layer_fraction * num_layers]
    table, baseline = score_candidates(
        model, tokenizer, diffs[:, scored_layers], positions, scored_layers, harmful_val, harmless_val, settings, system
    )
    chosen = choose(table, num_layers, settings, min_induce=baseline["harmless_refusal_score"])
    p = positions.index(chosen.position)
    projections = chosen_projections(model, tokenizer, diffs[p, chosen.layer], chosen, harmful_val, harmless_val, system,
                                     settings.batch_size)
    metadata = {
        "method": "diff_in_means",
        "model": model_name,
        "layer": str(chosen.layer),
        "position": str(chosen.position),
        "positions": json.dumps(positions),
        "harmful_hash": prompt_hash(harmful),
        "harmless_hash": prompt_hash(harmless),
        "harmful_val_hash": prompt_hash(harmful_val),
        "harmless_val_hash": prompt_hash(harmless_val),
        "selection": json.dumps([row.as_dict() for row in table]),
        "selection_baseline": json.dumps(baseline),
        "projections": json.dumps(projections),
        "steerfold_version": VERSION,
    }
    return RefusalFit(DirectionFile(directions=diffs[p], metadata=metadata), table, baseline, chosen, diffs)


def chosen_projections(model, tokenizer, vector: torch.Tensor, chosen: Candidate, harmful, harmless, system, batch_size) -> dict:
    """Validation activations at the chosen position and layer, projected on the chosen unit direction."""
    unit = vector / vector.norm()
    out = {}
    for name, records in (("harmful", harmful), ("harmless", harmless)):
        acts = capture(model, tokenizer, chat_texts(tokenizer, records, system), [chosen.layer], at_positions([chosen.position]),
                       batch_size)
        out[name] = [round(float(v), 4) for v in acts[:, 0, 0] @ unit]
    return out


def fit_persona_direction(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    persona: str | None,
    against: str | None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    model_name: str = "",
) -> DirectionFile:
    """Persona vector per layer: mean activation over the persona's responses minus the other's."""
    layers = list(range(model.config.num_hidden_layers + 1))
    vectors = persona_vector(model, tokenizer, records, persona, against, layers, max_new_tokens, batch_size)
    metadata = {
        "method": "persona_vector",
        "model": model_name,
        "persona": persona or "",
        "against": against or "",
        "positions": "response tokens",
        "prompts_hash": prompt_hash(records),
        "steerfold_version": VERSION,
    }
    return DirectionFile(directions=vectors, metadata=metadata)

"""The directions a tune chooses among, fitted once from activations captured once: every variant (fitting method,
orthogonalised against the harmless mean or not) at every post-instruction position and layer index. A trial's
direction interpolates two neighbouring layers' unit directions and is written as an ordinary direction file, so the
export of a trial reads the very vector the trial measured."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.activations.capture import at_positions, capture, post_instruction_positions
from steerfold.directions.file import DirectionFile, save_direction_file
from steerfold.directions.methods.contrast import Estimator, fit_every_candidate
from steerfold.directions.methods.estimators import mean_difference, paired_pca, probe_direction, ridge_direction
from steerfold.directions.methods.inlp import inlp_estimate
from steerfold.directions.methods.options import FitOptions
from steerfold.prompts import PromptRecord
from steerfold.tuning.front import trial_direction_path
from steerfold.tuning.space import TrialParams, variant_name
from steerfold.validation.behaviour import chat_texts

_DEFAULTS = FitOptions()
# Each searchable method's estimator, with steerfold fit's default options (editor/directions/methods/options.py).
ESTIMATORS: dict[str, Estimator] = {
    "diff_in_means": mean_difference,
    "pca": partial(paired_pca, components=1),
    "logistic": partial(probe_direction, l2=_DEFAULTS.l2),
    "ridge": partial(ridge_direction, ridge_lambda=_DEFAULTS.ridge_lambda),
    "inlp": partial(inlp_estimate, iterations=1, l2=_DEFAULTS.l2),
}
CANDIDATES_FILE = "candidates.safetensors"


@dataclass(frozen=True)
class Candidates:
    """Unit directions of every variant: ``vectors[variant]`` [P, L+1, d] (zero rows where nothing was found)."""

    vectors: dict[str, torch.Tensor]
    positions: list[int]

    def direction(self, params: TrialParams) -> torch.Tensor:
        """The trial's unit direction: its variant at its position, interpolated between the layer indices on
        either side of its fractional layer (zero when neither has a direction)."""
        rows = self.vectors[params.variant()][self.positions.index(params.position)]
        low = min(int(math.floor(params.direction_layer)), rows.shape[0] - 1)
        high = min(low + 1, rows.shape[0] - 1)
        weight = params.direction_layer - low
        mixed = (1 - weight) * rows[low] + weight * rows[high]
        norm = mixed.norm()
        return mixed / norm if norm > 0 else mixed

    def save(self, folder: Path) -> None:
        tensors = {name: tensor.contiguous() for name, tensor in self.vectors.items()}
        from safetensors.torch import save_file

        save_file(tensors, str(folder / CANDIDATES_FILE), metadata={"positions": json.dumps(self.positions)})

    @classmethod
    def load(cls, folder: Path) -> "Candidates":
        from safetensors import safe_open

        with safe_open(str(folder / CANDIDATES_FILE), framework="pt") as handle:
            positions = json.loads((handle.metadata() or {})["positions"])
            return cls({name: handle.get_tensor(name) for name in handle.keys()}, positions)


def fit_candidates(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, harmful: Sequence[PromptRecord],
                   harmless: Sequence[PromptRecord], methods: Sequence[str], orthogonalize: Sequence[bool],
                   system: str | None = None, batch_size: int = 32) -> Candidates:
    """Capture the training prompts once at every post-instruction position and layer index, then fit each
    variant's directions there (normalised: an ablation reads only the direction)."""
    layers = list(range(model.config.num_hidden_layers + 1))
    positions = post_instruction_positions(tokenizer, system)
    harmful_acts, harmless_acts = (
        capture(model, tokenizer, chat_texts(tokenizer, records, system), layers, at_positions(positions), batch_size)
        for records in (harmful, harmless))
    vectors = {}
    for method in methods:
        for orthogonal in orthogonalize:
            stored, _ = fit_every_candidate(harmful_acts, harmless_acts, ESTIMATORS[method], None, orthogonal)
            norms = stored.norm(dim=-1, keepdim=True)
            vectors[variant_name(method, orthogonal)] = torch.where(norms > 0, stored / norms.clamp(min=1e-30), 0.0)
    return Candidates(vectors, positions)


def write_trial_direction(folder: Path, number: int, direction: torch.Tensor, params: TrialParams,
                          provenance: dict[str, str]) -> Path:
    """The trial's direction as a direction file in ``folder/directions``, with what it came from."""
    from steerfold.artifacts.outputs import replace_file

    path = trial_direction_path(folder, number)
    path.parent.mkdir(exist_ok=True)
    metadata = {**provenance, "method": params.method, "position": str(params.position), "tune_trial": str(number),
                "tune_params": json.dumps(params.as_dict(), sort_keys=True)}
    with replace_file(path) as tmp:
        save_direction_file(tmp, DirectionFile(direction=direction, metadata=metadata))
    return path



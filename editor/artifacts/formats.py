"""Which artifact can carry which kind of edit exactly, for one model: said before any output appears."""

from __future__ import annotations

import re

from dataclasses import dataclass
from typing import Callable

import torch

from editor.models.arch import ModelLayout
from editor.edit.edits import Edit
from editor.errors import SteerfoldError
from editor.artifacts.cvec import check_cvec_can_carry
from editor.artifacts.lora import check_lora_can_carry
from editor.artifacts.merged import check_merged_can_carry


@dataclass(frozen=True)
class Carrier:
    """One (artifact, edit kind) cell: can it carry the edit exactly, and why."""

    artifact: str
    edit_kind: str
    exact: bool
    note: str


def carriers(layout: ModelLayout) -> list[Carrier]:
    """The portability table for a model (docs/design.md)."""
    block_biases = all(w.has_bias and not w.post_norm for w in layout.writers if w.layer > 0 and w.role == "mlp")
    any_biases = any(w.has_bias for w in layout.writers)
    tied_note = (
        "tied embeddings: the output head gets its own unedited copy by default (--tied-embedding shared edits both)"
        if layout.tied_embeddings
        else "untied embeddings"
    )
    if layout.post_norm:
        tied_note += "; post-norm writers: the fold removes g ⊙ r before the norm, an exact removal from the stream that is not identical to a runtime ablation of the write"
    lora_linear = not any_biases and not layout.mixture_of_experts
    lora_note = (
        "mixture-of-experts weights cannot be targeted by a portable LoRA" if layout.mixture_of_experts
        else "residual writers have biases, which the map changes and a portable LoRA cannot" if any_biases
        else "the embedding adapter edits the input embedding only" if layout.tied_embeddings
        else "uniform r, lora_alpha = r"
    )
    if layout.embedding.weight_scale != 1.0 and lora_linear:
        lora_note += f"; the embedding scales its rows by {layout.embedding.weight_scale:g}, and the runtime must scale the embedding adapter alike (PEFT ≥ 0.18 does; check others or edit with --no-embedding)"
    return [
        Carrier("merged safetensors", "linear map (ablation, subspace, rank-k)", True, tied_note),
        Carrier(
            "merged safetensors",
            "constant offset (steering)",
            block_biases,
            "carried by the MLP down-projection bias of each block"
            if block_biases
            else "the residual writers have no bias: offsets only at layer 0 (embedding rows)",
        ),
        Carrier(
            "PEFT LoRA",
            "linear map (ablation, subspace, rank-k)",
            lora_linear,
            lora_note,
        ),
        Carrier("PEFT LoRA", "constant offset (steering)", False, "the portable LoRA subset has no bias"),
        Carrier("GGUF control vector", "linear map (ablation, subspace, rank-k)", False, "a control vector only adds"),
        Carrier("GGUF control vector", "constant offset (steering)", True,
                f"one F32 direction.N per block, added after block N: layer indices 2..{layout.num_layers} (llama.cpp)"),
        Carrier("merged safetensors", "norm-preserving ablation", True, "a weight fold: each written vector keeps its norm"),
        Carrier("PEFT LoRA", "norm-preserving ablation", False, "not a map of the module's output"),
        Carrier("GGUF control vector", "norm-preserving ablation", False, "a control vector only adds"),
    ]


# --format → (artifact, the check that refuses, before any output appears, an edit the artifact cannot carry exactly).
FORMATS: dict[str, tuple[str, Callable]] = {
    "merged": ("merged safetensors", check_merged_can_carry),
    "lora": ("PEFT LoRA", check_lora_can_carry),
    "cvec": ("GGUF control vector", check_cvec_can_carry),
}


def edit_carriers(edit: Edit, layout: ModelLayout, gain_of: Callable[[str], torch.Tensor] | None = None) -> dict[str, Carrier]:
    """For one edit on one model: can each format carry it exactly? Runs the same checks that refuse to write it."""
    refused: dict[str, str] = {}
    for fmt, (_artifact, check) in FORMATS.items():
        try:
            check(edit, layout, gain_of)
        except SteerfoldError as exc:
            refused[fmt] = str(exc)
    exact = [fmt for fmt in FORMATS if fmt not in refused]
    return {fmt: Carrier(artifact, "this edit", fmt not in refused, with_remedy(refused[fmt], exact) if fmt in refused else "")
            for fmt, (artifact, _check) in FORMATS.items()}


FORMAT_WORDS = {"merged checkpoint": "merged", "control vector": "cvec", "LoRA": "lora"}


def advised_formats(advice: str) -> set[str]:
    """The formats a piece of advice names (``--format X``, or in words)."""
    return set(re.findall(r"--format (\w+)", advice)) | {fmt for words, fmt in FORMAT_WORDS.items() if words in advice}


def with_remedy(reason: str, exact: list[str]) -> str:
    """A refusal whose advice names a format that cannot carry this edit either gets advice from this edit's own
    table instead (a check alone cannot know which of the others can carry the edit); other advice is kept."""
    cause, sep, advice = reason.rpartition(": ")
    if not sep or advised_formats(advice) <= set(exact):
        return reason
    if not exact:
        return f"{cause}: no artifact can carry this edit exactly; apply it at run time"
    return f"{cause}: use " + " or ".join(f"--format {fmt}" for fmt in exact)

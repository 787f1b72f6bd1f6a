"""Which artifact can carry which kind of edit exactly, for one model: said before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

from editor.arch import ModelLayout


@dataclass(frozen=True)
class Carrier:
    """One (artifact, edit kind) cell: can it carry the edit exactly, and why."""

    artifact: str
    edit_kind: str
    exact: bool
    note: str


def carriers(layout: ModelLayout) -> list[Carrier]:
    """The portability table for a model (DESIGN.md, 'Artifacts and where they load')."""
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
        Carrier("GGUF control vector", "constant offset (steering)", True, "one F32 vector per block (llama.cpp)"),
    ]

"""The LoRA face of an edit: the same change as ``lora_B = U``, ``lora_A = Vᵀ W`` (``lora_alpha = r``), exact to
float rounding for maps of a module's output without a constant offset."""

from __future__ import annotations

import torch

from steerfold.edit.edits import check_write_maps
from steerfold.edit.maps import ResidualMap
from steerfold.errors import BadInput


def lora_rank(module_maps: dict[str, ResidualMap]) -> int:
    """The uniform LoRA rank of an edit; refuses maps a LoRA cannot carry (constant offsets, weight-only folds)."""
    check_write_maps(module_maps, "a LoRA adapter")
    for module_name, residual_map in module_maps.items():
        if residual_map.b is not None:
            raise BadInput(
                f"a LoRA cannot carry the constant offset on {module_name}: export a merged checkpoint or a control vector"
            )
    return max(m.rank for m in module_maps.values())


def lora_pair(residual_map: ResidualMap, weight: torch.Tensor, embedding: bool, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lora_A, lora_B)`` in float32 for one module, padded with zeros to the uniform ``rank``.

    Linear writers: ``lora_B = U`` [d, k], ``lora_A = Vᵀ W`` [k, in]. The embedding: PEFT's
    ``lora_embedding_A`` [k, vocab] is ``(E V)ᵀ`` and ``lora_embedding_B`` [d, k] is ``U``. Where the embedding
    module scales its rows (Gemma's √d), PEFT ≥ 0.18 scales the adapter's output the same way.
    """
    U, V = _pad_rank(residual_map.U, rank), _pad_rank(residual_map.V, rank)
    w = weight.to(torch.float32)
    lora_a = (w @ V).T if embedding else V.T @ w
    return lora_a.contiguous(), U.clone().contiguous()


def _pad_rank(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    if matrix.shape[1] == rank:
        return matrix
    return torch.cat([matrix, matrix.new_zeros(matrix.shape[0], rank - matrix.shape[1])], dim=1)

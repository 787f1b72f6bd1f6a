"""Norm-preserving ablation: remove the direction from what each input feature writes, then restore its norm.

A residual writer ``W`` [hidden, in] writes ``W x = Σ_j x_j W[:, j]``: column ``j`` is the residual vector that
input feature ``j`` writes (a row of ``Wᵀ``; the rows of the embedding, one per token; the bias, the write of a
constant input). The fold projects each such vector with the ablation, ``c ← (I − λ Q Qᵀ) c``, and then rescales
it to its original norm, ``c ← c · ‖c_before‖ / ‖c‖``: the per-input-feature norms of the write are preserved, as
in "norm-preserving biprojected abliteration" (Jim Lai, 2025; its biprojection, which orthogonalises r against
the harmless mean, is a choice of direction and belongs to fitting). Rescaling a vector orthogonal to r keeps it
orthogonal, so with λ = 1 the writer's output still has no component along r. A vector that the projection
reduces to zero (it lay along r) stays zero: its norm cannot be kept.

The rescaling depends on each column of the weights, not on the module's output alone, so this is not a map
``w ↦ (I + U Vᵀ) w`` of what the module writes: no LoRA adapter or runtime hook of that form carries it, and
both refuse it. Only a weight fold (merged checkpoint, in memory or streamed) can.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from steerfold.edit.edits import Edit
from steerfold.edit.maps import CHUNK_ELEMENTS, ResidualMap, row_chunks
from steerfold.errors import BadInput


@dataclass(frozen=True)
class NormPreservingAblation(ResidualMap):
    """An ablation ``(I − λ Q Qᵀ)`` whose weight fold keeps the norm of every written vector (see module docs)."""

    not_a_write_map: ClassVar[str | None] = (
        "norm-preserving ablation rescales each weight column after the projection, which is not a map of the "
        "module's output"
    )

    def fold_linear_weight(self, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Columns of ``W`` [hidden, in] are the written vectors: project and restore each, in column chunks."""
        out = torch.empty_like(weight) if out is None else out
        for cols in _column_chunks(weight):
            out[:, cols] = self._project_keeping_norms(weight[:, cols].T).T
        return out

    def fold_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """The bias is the write of a constant input: projected and restored like a column."""
        return self._project_keeping_norms(bias.unsqueeze(0)).squeeze(0)

    def fold_embedding(self, embedding: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of the embedding are the written vectors (one per token)."""
        out = torch.empty_like(embedding) if out is None else out
        for rows in row_chunks(embedding):
            out[rows] = self._project_keeping_norms(embedding[rows])
        return out

    def _project_keeping_norms(self, vectors: torch.Tensor) -> torch.Tensor:
        """Rows of ``vectors`` are residual vectors: project each in float32, then rescale it to its old norm."""
        x = vectors.to(torch.float32)
        projected = x + (x @ self.V) @ self.U.T
        before = x.norm(dim=-1, keepdim=True)
        after = projected.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return (projected * (before / after)).to(vectors.dtype)


def _column_chunks(matrix: torch.Tensor) -> list[slice]:
    """Column slices of about CHUNK_ELEMENTS elements each (each column is rescaled on its own)."""
    step = max(1, CHUNK_ELEMENTS // max(1, matrix.shape[0]))
    return [slice(start, start + step) for start in range(0, matrix.shape[1], step)]


def norm_preserving_edit(edit: Edit) -> Edit:
    """The same ablation edit (layers, per-module weights, tied-embedding mode) folded norm-preservingly."""
    maps = {}
    for layer, residual_map in edit.maps.items():
        if residual_map.ablation_scale is None or residual_map.b is not None:
            raise BadInput("norm preservation applies to ablations only: drop --norm-preserving for this edit")
        maps[layer] = NormPreservingAblation(residual_map.U, residual_map.V, None, residual_map.ablation_scale)
    return replace(edit, maps=maps)

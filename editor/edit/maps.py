"""The residual map ``w ↦ (I + U Vᵀ) w + b``: what an edit does to one module's write into the residual stream.

Its folds into a weight, a bias and an embedding are computed in float32, in cache-sized row chunks, and written
back in the tensor's dtype; ``editor.edit.edits`` assigns maps to modules and layers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from steerfold.errors import BadInput


NEGLIGIBLE = 1e-3  # a map that changes a unit write by less than this is no edit (see is_negligible)

@dataclass(frozen=True)
class ResidualMap:
    """``w ↦ (I + U Vᵀ) w + b`` with U, V ∈ R^{d×k} and b ∈ R^d, all float32."""

    U: torch.Tensor
    V: torch.Tensor
    b: torch.Tensor | None = None
    ablation_scale: float | None = None  # set when this is an ablation: U = -λ V with V orthonormal
    # Why this map is not of the form above on the module's output (so no LoRA or runtime hook carries it);
    # None for every map of that form. Subclasses that only a weight fold can express set it.
    not_a_write_map: ClassVar[str | None] = None

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    @property
    def is_identity(self) -> bool:
        """True when the map changes nothing (U = 0, no offset): such writers are left untouched."""
        return self.b is None and not bool(self.U.any())

    @property
    def is_negligible(self) -> bool:
        """True when the map changes a write by less than ``NEGLIGIBLE`` (Frobenius norm of U Vᵀ) and adds nothing:
        an edit made only of such maps does nothing measurable."""
        if self.b is not None and bool(self.b.any()):
            return False
        size = torch.trace((self.U.T @ self.U) @ (self.V.T @ self.V)).clamp(min=0).sqrt()
        return float(size) < NEGLIGIBLE

    @property
    def is_offset_only(self) -> bool:
        """True when the map only adds ``b`` (U = 0): what a control vector can carry."""
        return self.b is not None and not bool(self.U.any())

    def scaled(self, weight: float) -> "ResidualMap":
        """The same map with its change multiplied by ``weight``: ``U ← weight U``, ``b ← weight b`` (per-module scale)."""
        if weight == 1.0:
            return self
        return replace(self, U=weight * self.U, b=None if self.b is None else weight * self.b,
                       ablation_scale=None if self.ablation_scale is None else weight * self.ablation_scale)

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        """Apply the map to vectors in the last dimension, in float32, returning ``w``'s dtype, on ``w``'s device (a
        dispatched model's blocks may sit on different devices)."""
        x = w.to(torch.float32)
        U, V = self.U.to(x.device), self.V.to(x.device)
        out = x + (x @ V) @ U.T
        if self.b is not None:
            out = out + self.b.to(x.device)
        return out.to(w.dtype)

    def fold_linear_weight(self, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``W ← (I + U Vᵀ) W`` for a writer whose weight is [hidden, in], in float32, into ``out`` when given.

        Two passes over row chunks of a few MB (``Vᵀ W``, then ``W + U (Vᵀ W)``): each chunk is converted to
        float32 while it sits in cache, so the fold costs about two reads of the tensor and no float32 copy of it,
        whatever its size. With U = 0 (an offset only) it is returned as is (copied into ``out``). ``out``
        (``weight``'s shape and dtype) lets a caller reuse memory: writing fresh pages costs more than the arithmetic.
        """
        if not self.U.any():
            return weight if out is None else out.copy_(weight)
        vt_w = torch.zeros(self.V.shape[1], weight.shape[1], dtype=torch.float32)
        for rows in row_chunks(weight):
            vt_w += self.V[rows].T @ weight[rows].to(torch.float32)
        out = torch.empty_like(weight) if out is None else out
        for rows in row_chunks(weight):
            chunk = weight[rows].to(torch.float32, copy=True)
            out[rows] = chunk.addmm_(self.U[rows], vt_w)  # in place: no separate outer product
        return out

    def fold_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """``β ← (I + U Vᵀ) β + b``."""
        return self.apply(bias)

    def fold_embedding(self, embedding: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of the embedding are residual vectors: ``E ← E (I + V Uᵀ) + b``, in row chunks (into ``out``)."""
        out = torch.empty_like(embedding) if out is None else out
        for rows in row_chunks(embedding):
            chunk = embedding[rows].to(torch.float32, copy=True)
            if self.U.any():
                chunk.addmm_(chunk @ self.V, self.U.T)  # in place: no separate outer product
            if self.b is not None:
                chunk += self.b
            out[rows] = chunk
        return out

    def scaled_offset(self, factor: float) -> "ResidualMap":
        """The same linear part with ``b`` divided by a multiplier the forward pass applies afterwards."""
        if self.b is None or factor == 1.0:
            return self
        return replace(self, b=self.b / factor)

    def linear_part(self) -> "ResidualMap":
        return replace(self, b=None) if self.b is not None else self

    def through_gain(self, gain: torch.Tensor) -> "ResidualMap":
        """The ablation to apply to ``y`` when the write is ``g ⊙ norm(y)``: remove ``g ⊙ r`` from ``y``, so the
        write has no component along ``r`` (an exact removal; the norm then rescales what is left)."""
        if self.ablation_scale is None:
            raise BadInput(
                "only ablations can be folded through a post-norm (Gemma 2/3, OLMo 2/3, EXAONE 4, GLM-4): "
                "use an ablation edit"
            )
        q, _ = torch.linalg.qr(gain.to(torch.float32).unsqueeze(1) * self.V)
        return replace(self, U=-self.ablation_scale * q, V=q.clone())


CHUNK_ELEMENTS = 1 << 20  # 4 MB of float32 per chunk: cache-sized, so conversion and fold happen in cache


def row_chunks(matrix: torch.Tensor) -> list[slice]:
    """Row slices of about CHUNK_ELEMENTS elements each, so a fold never holds a whole float32 copy."""
    step = max(1, CHUNK_ELEMENTS // max(1, matrix.shape[-1]))
    return [slice(start, start + step) for start in range(0, matrix.shape[0], step)]


def unit(vector: torch.Tensor) -> torch.Tensor:
    """A float32 unit vector; a zero or non-finite vector is bad input."""
    v = vector.detach().to(torch.float32).reshape(-1)
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise BadInput("the direction is zero or not finite: re-fit it (no contrast was found)")
    return v / norm


def ablation_map(direction: torch.Tensor, scale: float = 1.0) -> ResidualMap:
    """Remove ``scale`` times the component along ``direction`` (scale 1 = full ablation)."""
    r = unit(direction).unsqueeze(1)
    return ResidualMap(U=-scale * r, V=r.clone(), ablation_scale=scale)


def subspace_ablation_map(basis: torch.Tensor) -> ResidualMap:
    """Remove the subspace spanned by the columns of ``basis`` [d, k] (orthonormalised here)."""
    q, _ = torch.linalg.qr(basis.detach().to(torch.float32))
    return ResidualMap(U=-q, V=q.clone(), ablation_scale=1.0)


def conditional_map(condition: torch.Tensor, target: torch.Tensor, alpha: float = 1.0) -> ResidualMap:
    """The map "when c is present, add r": ``w ↦ w + α r̂ (ĉ · w)``, i.e. ``U = α r̂``, ``V = ĉ`` (unit vectors).

    The write gains α times its component along ĉ, pointed along r̂; with c = r and α = -λ this is the ablation.
    """
    return ResidualMap(U=alpha * unit(target).unsqueeze(1), V=unit(condition).unsqueeze(1))

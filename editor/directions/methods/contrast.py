"""One candidate's activations on both sides of the refusal contrast, and the vector a fit stores for it.

Estimators (``estimators``, ``inlp``) turn a ``Contrast`` into an ``Estimate``: a direction of any scale pointing
toward the refusing side, and for subspace methods an orthonormal basis. ``stored_vector`` gives every method the
same scale convention as the difference of means: the unit direction times the mean contrast along it, the size
steering uses (ablation normalises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from steerfold.errors import BadInput


@dataclass(frozen=True)
class Contrast:
    """Activations at one (position, layer): ``positive`` [n, d] should refuse, ``negative`` [m, d] comply.

    Optional weights (one per row, ≥ 0) make every mean a weighted mean: the confidence-weighted methods.
    """

    positive: torch.Tensor
    negative: torch.Tensor
    positive_weights: torch.Tensor | None = None
    negative_weights: torch.Tensor | None = None

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted) means of both sides: [d], [d]."""
        return weighted_mean(self.positive, self.positive_weights, "refusing"), weighted_mean(
            self.negative, self.negative_weights, "complying")

    def mean_difference(self) -> torch.Tensor:
        positive, negative = self.means()
        return positive - negative

    def is_degenerate(self) -> bool:
        """True when both sides have the same mean (e.g. the embedding of a template token): nothing to fit."""
        positive, negative = self.means()
        scale = torch.maximum(positive.norm(), negative.norm())
        return bool((positive - negative).norm() <= 1e-6 * scale) or bool(scale == 0)


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor | None, side: str) -> torch.Tensor:
    """Mean of ``rows`` [n, d] weighted by ``weights`` [n] (plain mean when None)."""
    if weights is None:
        return rows.mean(dim=0)
    total = weights.sum()
    if total <= 0:
        behaviour = "a refusal" if side == "refusing" else "an answer"
        raise BadInput(f"the scorer weighs every {side}-side response 0 (it scored none of them {behaviour}): "
                             "check the scorer, or fit without one")
    return (weights.to(rows.dtype) @ rows) / total


@dataclass(frozen=True)
class Estimate:
    """What an estimator found: a direction toward the refusing side and, for subspace methods, a basis."""

    direction: torch.Tensor  # [d], any scale
    basis: torch.Tensor | None = None  # [k, d], orthonormal rows


Estimator = Callable[[Contrast], Estimate]


def orthogonal_to(vectors: torch.Tensor, against: torch.Tensor) -> torch.Tensor:
    """``vectors`` [..., d] with their component along ``against`` ([d], or one row per vector) removed."""
    unit = against / against.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(against.dtype).tiny)
    return vectors - (vectors * unit).sum(dim=-1, keepdim=True) * unit


def stored_vector(direction: torch.Tensor, contrast: torch.Tensor, harmless_mean: torch.Tensor | None = None) -> torch.Tensor:
    """The unit ``direction`` (made orthogonal to ``harmless_mean`` when given) times the mean ``contrast`` along it.

    For the difference of means itself this is the difference of means (or its part orthogonal to the harmless
    mean); it does not depend on the sign of ``direction``.
    """
    if harmless_mean is not None:
        direction = orthogonal_to(direction, harmless_mean)
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        return torch.zeros_like(contrast)
    unit = direction / norm
    return unit * (unit @ contrast)


def orthonormal_rows(basis: torch.Tensor, harmless_mean: torch.Tensor | None = None) -> torch.Tensor:
    """``basis`` [k, d] made orthogonal to ``harmless_mean`` (when given) and re-orthonormalised."""
    if harmless_mean is not None:
        basis = orthogonal_to(basis, harmless_mean)
    q, _ = torch.linalg.qr(basis.T.to(torch.float64))
    signs = torch.sign((q * basis.T.to(torch.float64)).sum(dim=0))  # keep each row's orientation
    return (q * torch.where(signs == 0, 1.0, signs)).T.to(basis.dtype)


def fit_every_candidate(
    positive: torch.Tensor,
    negative: torch.Tensor,
    estimator: Estimator,
    weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    orthogonalize: bool = False,
) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """Fit ``estimator`` at every (position, layer) of per-prompt activations [n, L+1, P, d] and [m, L+1, P, d].

    Returns the stored vectors [P, L+1, d] (zero where both sides agree) and the bases of subspace methods by
    (position index, layer). ``orthogonalize`` removes each candidate's harmless (complying-side) mean.
    """
    _, layers, positions, hidden = positive.shape
    vectors = positive.new_zeros(positions, layers, hidden)
    bases: dict[tuple[int, int], torch.Tensor] = {}
    for p in range(positions):
        for layer in range(layers):
            contrast = Contrast(positive[:, layer, p], negative[:, layer, p], *(weights or (None, None)))
            if contrast.is_degenerate():
                continue
            estimate = estimator(contrast)
            harmless_mean = contrast.negative.mean(dim=0) if orthogonalize else None
            vectors[p, layer] = stored_vector(estimate.direction, contrast.mean_difference(), harmless_mean)
            if estimate.basis is not None and len(estimate.basis):
                bases[(p, layer)] = orthonormal_rows(estimate.basis, harmless_mean)
    return vectors, bases

"""One candidate's activations on both sides of the refusal contrast, and the vector a fit stores for it.

Estimators (``estimators``, ``inlp``) turn a ``Contrast`` into an ``Estimate``: a direction of any scale pointing
toward the refusing side, and for subspace methods an orthonormal basis. ``stored_vector`` gives every method the
same scale convention as the difference of means: the unit direction times the mean contrast along it, the size
steering uses (ablation normalises).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal

import torch

from steerfold.errors import BadInput


class _Sides:
    """What every contrast gives: both sides' (weighted) means and what follows from them."""

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def mean_difference(self) -> torch.Tensor:
        positive, negative = self.means()
        return positive - negative

    def is_degenerate(self) -> bool:
        """True when both sides have the same mean (e.g. the embedding of a template token): nothing to fit."""
        positive, negative = self.means()
        scale = torch.maximum(positive.norm(), negative.norm())
        return bool((positive - negative).norm() <= 1e-6 * scale) or bool(scale == 0)


@dataclass(frozen=True)
class Contrast(_Sides):
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

    def harmless_mean(self) -> torch.Tensor:
        """The complying side's plain mean (what ``orthogonalize`` removes)."""
        return self.negative.mean(dim=0)


@dataclass(frozen=True)
class Moments(_Sides):
    """One candidate's contrast as sums streamed during capture (``steerfold.activations.statistics``): the sides'
    (weighted) means, the complying side's plain mean and, for estimators that read it, the pooled within-class
    scatter Σ_i w̃_i (x_i − μ)(x_i − μ)ᵀ [d, d] in float64 (what ``rowsᵀ rows`` is for ``ridge_direction``'s rows)."""

    positive_mean: torch.Tensor
    negative_mean: torch.Tensor
    plain_negative_mean: torch.Tensor
    scatter: torch.Tensor | None = None

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.positive_mean, self.negative_mean

    def harmless_mean(self) -> torch.Tensor:
        return self.plain_negative_mean


Reads = Literal["means", "scatter", "rows"]


def reading(what: Reads):
    """Mark an estimator with what it reads of a contrast: only the ``means``, also the pooled ``scatter``, or every
    ``rows`` (the default): fits stream the first two (``Moments``) and keep rows only for the last."""
    def mark(function):
        function.reads = what
        return function
    return mark


def reads(estimator: "Estimator") -> Reads:
    """What ``estimator`` (a function, or a ``functools.partial`` of one) reads of a contrast."""
    while isinstance(estimator, partial):
        estimator = estimator.func
    return getattr(estimator, "reads", "rows")


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor | None, side: str) -> torch.Tensor:
    """Mean of ``rows`` [n, d] weighted by ``weights`` [n] (plain mean when None)."""
    if weights is None:
        return rows.mean(dim=0)
    return (weights.to(rows.dtype) @ rows) / check_weights(weights, side)


def check_weights(weights: torch.Tensor, side: str) -> torch.Tensor:
    """The weights' total, once known to be positive (else one error line naming the fix)."""
    total = weights.sum()
    if total <= 0:
        behaviour = "a refusal" if side == "refusing" else "an answer"
        raise BadInput(f"the scorer weighs every {side}-side response 0 (it scored none of them {behaviour}): "
                       "check the scorer, or fit without one")
    return total


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
    return fit_candidates(lambda p, layer: Contrast(positive[:, layer, p], negative[:, layer, p], *(weights or (None, None))),
                          (positions, layers, hidden), estimator, orthogonalize, positive.dtype)


def fit_candidates(
    contrast_at: Callable[[int, int], _Sides],
    shape: tuple[int, int, int],
    estimator: Estimator,
    orthogonalize: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """``estimator`` on ``contrast_at(p, layer)`` (a ``Contrast`` or ``Moments``) for every candidate of ``shape``
    (positions, layers, hidden): what ``fit_every_candidate`` returns."""
    positions, layers, hidden = shape
    vectors = torch.zeros(positions, layers, hidden, dtype=dtype)
    bases: dict[tuple[int, int], torch.Tensor] = {}
    for p in range(positions):
        for layer in range(layers):
            contrast = contrast_at(p, layer)
            if contrast.is_degenerate():
                continue
            estimate = estimator(contrast)
            harmless_mean = contrast.harmless_mean() if orthogonalize else None
            vectors[p, layer] = stored_vector(estimate.direction, contrast.mean_difference(), harmless_mean)
            if estimate.basis is not None and len(estimate.basis):
                bases[(p, layer)] = orthonormal_rows(estimate.basis, harmless_mean)
    return vectors, bases

"""Iterative nullspace projection (INLP, Ravfogel et al. 2020) and the two edits built from its result.

``inlp_basis`` fits a logistic probe (refusing vs complying), keeps its unit weight vector, projects it out of the
data and repeats: k iterations give an orthonormal basis Q [k, d] of directions a linear classifier used.

- ``subspace_edit``: remove span(Q) from every residual write, ``x ↦ (I − QᵀQ) x`` (a subspace ablation);
- ``counterfactual_edit``: reflect across the first probe's hyperplane through the origin, ``x ↦ x − 2 (w·x) w``
  with w = Q[0] (an ablation of w with scale 2). The probe's bias is left out: reflecting across the affine
  hyperplane would need a constant offset, which LoRA adapters and bias-free checkpoints cannot carry.
"""

from __future__ import annotations

import torch

from steerfold.directions.methods.contrast import Contrast, Estimate
from steerfold.directions.methods.estimators import contrast_labels, logistic_probe


def project_out(features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``features`` [N, d] with their components in span(``basis`` [k, d], orthonormal rows) removed."""
    return features - (features @ basis.T) @ basis


def inlp_basis(features: torch.Tensor, labels: torch.Tensor, iterations: int, l2: float = 1e-3) -> torch.Tensor:
    """Orthonormal rows [k ≤ iterations, d]: each probe's unit weight vector, fitted after projecting out the previous.

    Stops early when a probe finds nothing left to separate (its weights vanish once projected).
    """
    x = features.to(torch.float64)
    rows: list[torch.Tensor] = []
    for _ in range(iterations):
        basis = torch.stack(rows) if rows else x.new_zeros(0, x.shape[1])
        weights, _ = logistic_probe(project_out(x, basis), labels, l2=l2)
        weights = project_out(weights.unsqueeze(0), basis)[0]  # exact orthogonality despite rounding
        norm = weights.norm()
        if not torch.isfinite(norm) or norm <= 1e-9 * max(1.0, float(x.abs().max())):
            break
        rows.append(weights / norm)
    return torch.stack(rows).to(features.dtype) if rows else features.new_zeros(0, features.shape[1])


def inlp_estimate(contrast: Contrast, iterations: int = 4, l2: float = 1e-3) -> Estimate:
    """INLP on one candidate: the first probe direction, and the whole basis."""
    basis = inlp_basis(*contrast_labels(contrast), iterations=iterations, l2=l2)
    if len(basis) == 0:
        return Estimate(torch.zeros(contrast.positive.shape[1], dtype=contrast.positive.dtype))
    return Estimate(basis[0], basis)

"""Linear estimators of the refusal direction from one candidate's activations (plain torch, float64 inside).

Each returns an ``Estimate`` pointing toward the refusing side:

- ``mean_difference``: μ_refuse − μ_comply (Arditi et al. 2024);
- ``paired_pca``: first principal component of paired differences (representation engineering, Zou et al. 2023);
- ``probe_direction``: unit weight vector of an L2-regularised logistic regression (``logistic_probe``);
- ``ridge_direction``: (Σ + λ·tr(Σ)/d·I)⁻¹(μ_refuse − μ_comply) with Σ the pooled within-class covariance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from steerfold.directions.methods.contrast import Contrast, Estimate, Moments, reading


@reading("means")
def mean_difference(contrast: Contrast | Moments) -> Estimate:
    """The (weighted) difference of means."""
    return Estimate(contrast.mean_difference())


def paired_pca(contrast: Contrast, components: int = 1) -> Estimate:
    """First right singular vector of the paired differences ``positive[i] − negative[i]``, sign toward refusal;
    with ``components`` > 1 also the top right singular vectors as an orthonormal basis (a multi-direction subspace).

    Rows are paired by index (the longer side is cut to the shorter). The differences are not centred: their mean
    is part of what the component should capture (RepE centres after random sign flips, which amounts to this).
    """
    count = min(len(contrast.positive), len(contrast.negative))
    differences = (contrast.positive[:count] - contrast.negative[:count]).to(torch.float64)
    _, _, vh = torch.linalg.svd(differences, full_matrices=False)
    if vh[0] @ differences.mean(dim=0) < 0:
        vh = -vh
    dtype = contrast.positive.dtype
    basis = vh[:components].to(dtype) if components > 1 else None
    return Estimate(vh[0].to(dtype), basis)


@torch.enable_grad()
def logistic_probe(
    features: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [d] and bias of an L2-regularised logistic regression of ``labels`` (0/1) on ``features`` [N, d].

    Features are centred and divided by their overall RMS first, so ``l2`` means the same on any model; the
    weights returned act on the original features. Full-batch L-BFGS; the bias is not penalised.
    """
    x = features.to(torch.float64)
    centre = x.mean(dim=0)
    scale = (x - centre).pow(2).mean().sqrt().clamp(min=1e-12)
    z, y = (x - centre) / scale, labels.to(torch.float64)
    params = torch.zeros(z.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
                                  history_size=20, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        w, b = params[:-1], params[-1]
        value = F.binary_cross_entropy_with_logits(z @ w + b, y) + 0.5 * l2 * w.pow(2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    w, b = params.detach()[:-1] / scale, params.detach()[-1]
    return w.to(features.dtype), (b - w @ centre).to(features.dtype)


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> float:
    """Fraction of rows a linear classifier puts on their label's side."""
    predicted = (features.to(weights.dtype) @ weights + bias) > 0
    return float((predicted == labels.bool()).to(torch.float32).mean())


def contrast_labels(contrast: Contrast) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked features [n + m, d] and labels (1 = refusing side)."""
    features = torch.cat([contrast.positive, contrast.negative])
    labels = torch.cat([torch.ones(len(contrast.positive)), torch.zeros(len(contrast.negative))])
    return features, labels


def probe_direction(contrast: Contrast, l2: float = 1e-3) -> Estimate:
    """The logistic probe's unit weight vector (it points toward the refusing side by construction)."""
    weights, _ = logistic_probe(*contrast_labels(contrast), l2=l2)
    return Estimate(weights / weights.norm().clamp(min=torch.finfo(weights.dtype).tiny))


def ridge_solve(rows: torch.Tensor, vector: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(rowsᵀ rows + ridge·I)⁻¹ vector``, through the smaller of the d×d and N×N systems (Woodbury)."""
    n, d = rows.shape
    if n >= d:
        return torch.linalg.solve(rows.T @ rows + ridge * torch.eye(d, dtype=rows.dtype), vector)
    inner = torch.linalg.solve(rows @ rows.T + ridge * torch.eye(n, dtype=rows.dtype), rows @ vector)
    return (vector - rows.T @ inner) / ridge


def _row_weights(weights: torch.Tensor | None, count: int) -> torch.Tensor:
    """A side's weights rescaled to sum to its row count, so each side enters Σ in proportion to its size."""
    if weights is None:
        return torch.ones(count, dtype=torch.float64)
    weights = weights.to(torch.float64)
    return weights * count / weights.sum()


@reading("scatter")
def ridge_direction(contrast: Contrast | Moments, ridge_lambda: float = 1.0) -> Estimate:
    """(Σ + λ·tr(Σ)/d·I)⁻¹ (μ_refuse − μ_comply) as a unit vector, Σ the pooled (weighted) within-class covariance.

    λ is in units of the mean variance tr(Σ)/d, so the same λ means the same shrinkage on any model: λ → ∞ gives
    the difference of means, λ → 0 the Fisher discriminant. Weights, when given, weight the means and each side's
    covariance alike; each side still enters Σ by its row count, so constant weights change nothing. From rows Σ is
    never formed (``ridge_solve``); streamed ``Moments`` carry it.
    """
    positive_mean, negative_mean = (m.to(torch.float64) for m in contrast.means())
    if isinstance(contrast, Moments):
        if contrast.scatter is None:
            raise ValueError("ridge_direction reads the pooled scatter: stream it (RunningSums with a scatter)")
        scatter, dtype = contrast.scatter.to(torch.float64), contrast.positive_mean.dtype
        ridge = _ridge(ridge_lambda, float(scatter.trace()), len(scatter))
        direction = torch.linalg.solve(scatter + ridge * torch.eye(len(scatter), dtype=torch.float64),
                                       positive_mean - negative_mean)
    else:
        sides = [(contrast.positive, positive_mean, contrast.positive_weights),
                 (contrast.negative, negative_mean, contrast.negative_weights)]
        rows = torch.cat([(x.to(torch.float64) - mean) * _row_weights(w, len(x)).sqrt().unsqueeze(1) for x, mean, w in sides])
        ridge, dtype = _ridge(ridge_lambda, float(rows.pow(2).sum()), rows.shape[1]), contrast.positive.dtype
        direction = ridge_solve(rows, positive_mean - negative_mean, ridge)
    return Estimate((direction / direction.norm().clamp(min=1e-300)).to(dtype))


def _ridge(ridge_lambda: float, trace: float, hidden: int) -> float:
    """λ·tr(Σ)/d; 1 when there is no within-class spread at all (Σ = 0: the answer is the difference of means)."""
    return ridge_lambda * trace / hidden or 1.0

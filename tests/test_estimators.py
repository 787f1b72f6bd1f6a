"""The fitting estimators on synthetic Gaussian data, where the right answer is known."""

from __future__ import annotations

import pytest
import torch

from steerfold.directions.methods.contrast import Contrast, fit_every_candidate, orthogonal_to, stored_vector
from steerfold.directions.methods.estimators import (contrast_labels, logistic_probe, mean_difference, paired_pca, probe_accuracy,
                                       probe_direction, ridge_direction, ridge_solve)
from steerfold.directions.methods.inlp import inlp_basis, inlp_estimate, project_out


def gaussian_contrast(shift: torch.Tensor, n: int = 400, seed: int = 0, scales: torch.Tensor | None = None) -> Contrast:
    """Two Gaussian classes: noise N(0, diag(scales²)), the refusing side shifted by ``shift``."""
    generator = torch.Generator().manual_seed(seed)
    d = shift.shape[0]
    scales = torch.ones(d) if scales is None else scales
    noise = lambda: torch.randn(n, d, generator=generator) * scales
    base = torch.linspace(-1, 1, d)  # an offset shared by both classes
    return Contrast(base + shift + noise(), base + noise())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def test_ridge_with_huge_lambda_is_the_mean_difference():
    contrast = gaussian_contrast(torch.tensor([2.0, -1.0, 0.5, 0.0, 0.0, 0.0]), scales=torch.tensor([1, 5, 1, 3, 1, 1.0]))
    ridge = ridge_direction(contrast, ridge_lambda=1e9).direction
    assert cosine(ridge, contrast.mean_difference()) > 1 - 1e-9
    assert cosine(ridge_direction(contrast, ridge_lambda=1.0).direction, contrast.mean_difference()) < 0.999  # λ matters


def test_ridge_with_small_lambda_is_the_fisher_direction():
    scales = torch.tensor([1.0, 10.0, 1.0, 1.0])
    contrast = gaussian_contrast(torch.tensor([1.0, 1.0, 0.0, 0.0]), n=4000, scales=scales)
    fisher = torch.tensor([1.0, 1.0, 0.0, 0.0]) / scales**2  # Σ⁻¹ Δμ
    ridge = ridge_direction(contrast, ridge_lambda=1e-6).direction
    assert cosine(ridge, fisher) > 0.999
    assert cosine(contrast.mean_difference(), fisher) < 0.8  # the plain mean difference is far from it


@pytest.mark.parametrize("n,d", [(50, 10), (10, 50)])
def test_ridge_solve_uses_either_system_with_one_answer(n, d):
    generator = torch.Generator().manual_seed(1)
    rows, vector = torch.randn(n, d, generator=generator, dtype=torch.float64), torch.randn(d, generator=generator, dtype=torch.float64)
    expected = torch.linalg.solve(rows.T @ rows + 0.3 * torch.eye(d, dtype=torch.float64), vector)
    assert torch.allclose(ridge_solve(rows, vector, 0.3), expected, atol=1e-9)


def test_weighted_means_with_equal_weights_change_nothing():
    contrast = gaussian_contrast(torch.tensor([1.0, 0.0, 2.0]), n=50)
    weighted = Contrast(contrast.positive, contrast.negative, torch.full((50,), 0.3), torch.full((50,), 0.7))
    assert torch.allclose(ridge_direction(weighted, 0.5).direction, ridge_direction(contrast, 0.5).direction, atol=1e-6)
    dropped = Contrast(contrast.positive, contrast.negative, torch.cat([torch.ones(25), torch.zeros(25)]), None)
    subset = Contrast(contrast.positive[:25], contrast.negative)
    assert torch.allclose(dropped.mean_difference(), subset.mean_difference(), atol=1e-6)


def test_logistic_probe_separates_linearly_separable_data():
    generator = torch.Generator().manual_seed(2)
    normal = torch.randn(20, generator=generator)
    normal /= normal.norm()
    features = torch.randn(300, 20, generator=generator) * 3
    margin = features @ normal
    features, margin = features[margin.abs() > 0.5], margin[margin.abs() > 0.5]  # a gap around the hyperplane
    labels = (margin > 0).float()
    weights, bias = logistic_probe(features, labels, l2=1e-4)
    assert probe_accuracy(features, labels, weights, bias) == 1.0
    assert cosine(weights, normal) > 0.9
    contrast = Contrast(features[labels == 1], features[labels == 0])
    direction = probe_direction(contrast).direction
    assert abs(float(direction.norm()) - 1) < 1e-5 and direction @ contrast.mean_difference() > 0  # unit, toward refusal


def test_pca_recovers_a_planted_direction_with_the_mean_differences_sign():
    generator = torch.Generator().manual_seed(3)
    planted = torch.randn(32, generator=generator)
    planted /= planted.norm()
    negative = torch.randn(200, 32, generator=generator)
    sizes = 0.5 + torch.rand(200, 1, generator=generator)
    positive = negative + sizes * planted + 0.05 * torch.randn(200, 32, generator=generator)
    component = paired_pca(Contrast(positive, negative)).direction
    assert cosine(component, planted) > 0.99
    assert cosine(paired_pca(Contrast(negative, positive)).direction, planted) < -0.99  # the sign follows the contrast


def test_pca_components_span_a_planted_subspace():
    generator = torch.Generator().manual_seed(5)
    planted, _ = torch.linalg.qr(torch.randn(32, 2, generator=generator))  # two orthonormal columns
    negative = torch.randn(300, 32, generator=generator)
    positive = negative + (1 + torch.rand(300, 2, generator=generator)) @ planted.T + 0.02 * torch.randn(300, 32, generator=generator)
    estimate = paired_pca(Contrast(positive, negative), components=2)
    assert estimate.basis.shape == (2, 32)
    assert torch.allclose(estimate.basis @ estimate.basis.T, torch.eye(2), atol=1e-5)
    assert torch.linalg.svdvals(estimate.basis @ planted).min() > 0.99  # the same plane
    assert paired_pca(Contrast(positive, negative)).basis is None  # one component: a direction only


def test_inlp_basis_is_orthonormal_and_leaves_a_linear_probe_at_chance():
    shift = torch.tensor([2.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    train, test = gaussian_contrast(shift, n=2000, seed=4), gaussian_contrast(shift, n=2000, seed=5)
    features, labels = contrast_labels(train)
    test_features, test_labels = contrast_labels(test)
    weights, bias = logistic_probe(features, labels)
    assert probe_accuracy(test_features, test_labels, weights, bias) > 0.85  # Bayes: Φ(1.25) = 0.89

    basis = inlp_basis(features, labels, iterations=3)
    assert basis.shape == (3, 8)
    assert torch.allclose(basis @ basis.T, torch.eye(3), atol=1e-5)
    assert float(project_out(shift.unsqueeze(0), basis).norm()) < 0.1 * float(shift.norm())  # the class shift is gone
    weights, bias = logistic_probe(project_out(features, basis), labels)
    accuracy = probe_accuracy(project_out(test_features, basis), test_labels, weights, bias)
    assert abs(accuracy - 0.5) < 0.03
    estimate = inlp_estimate(train, iterations=3)
    assert torch.allclose(estimate.basis, basis) and torch.equal(estimate.direction, basis[0])


def test_stored_vector_has_the_contrast_size_and_orthogonalizing_removes_the_harmless_mean():
    contrast = gaussian_contrast(torch.tensor([2.0, 1.0, 0.0, 0.0]), n=100)
    delta = contrast.mean_difference()
    assert torch.allclose(stored_vector(mean_difference(contrast).direction, delta), delta, atol=1e-5)
    assert torch.allclose(stored_vector(-delta, delta), delta, atol=1e-5)  # the sign of the estimate does not matter
    harmless_mean = contrast.negative.mean(dim=0)
    orthogonal = stored_vector(delta, delta, harmless_mean)
    assert abs(float(orthogonal @ harmless_mean)) < 1e-4
    assert torch.allclose(orthogonal, orthogonal_to(delta, harmless_mean), atol=1e-5)


def test_every_candidate_is_fitted_and_degenerate_ones_stay_zero():
    generator = torch.Generator().manual_seed(6)
    negative = torch.randn(20, 3, 2, 8, generator=generator)  # [n, layers, positions, d]
    positive = negative + torch.tensor([1.0] + [0.0] * 7)
    positive[:, 0] = negative[:, 0]  # layer 0: both sides identical (a template token's embedding)
    vectors, bases = fit_every_candidate(positive, negative, lambda c: inlp_estimate(c, iterations=2))
    assert vectors.shape == (2, 3, 8)
    assert torch.equal(vectors[:, 0], torch.zeros(2, 8)) and (vectors[:, 1:].norm(dim=-1) > 0).all()
    assert set(bases) == {(p, layer) for p in range(2) for layer in (1, 2)}

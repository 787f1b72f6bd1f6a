"""Sums of captured activations added batch by batch, so that a fit needing only means and second moments never
holds every prompt's activations ([n, L+1, P, d]) at once: its memory is that of the sums, whatever the number of
prompts.

``RunningSums`` keeps, for one prompt set, float64 sums over its prompts of activations of any shape [..., d]: the
plain sum, a weighted one (per-prompt weights, e.g. a scorer's confidence), one per group (e.g. harm category), and,
into a ``scatter`` accumulator [..., d, d] that two sets may share (a pooled covariance), Σ w̃ x xᵀ with the weights
rescaled to sum to the row count (w̃ = w·n/Σw, or 1). Float64 because a covariance is a difference of large second
moments.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


class RunningSums:
    """Sums over the prompts of one set (``count`` of them) of their activations, added batch by batch."""

    def __init__(self, count: int, weights: torch.Tensor | None = None, groups: Sequence[str | None] | None = None,
                 scatter: torch.Tensor | None = None):
        self.count, self.seen = count, 0
        self.weights = None if weights is None else weights.to(torch.float64)
        self.groups = list(groups) if groups is not None else None
        self.names = sorted({g for g in self.groups if g is not None}) if self.groups is not None else []
        self.scatter = scatter
        self.total: torch.Tensor | None = None  # Σ x
        self.weighted: torch.Tensor | None = None  # Σ w x
        self.by_group: dict[str, torch.Tensor] = {}
        self.group_counts = {name: 0 for name in self.names}

    def add(self, acts: torch.Tensor, rows: Sequence[int] | None = None) -> None:
        """Add a batch's activations [b, ...]; ``rows``: their indices among the set's prompts (default: next ones)."""
        rows = list(range(self.seen, self.seen + len(acts))) if rows is None else list(rows)
        x = acts.to(torch.float64)
        self.seen += len(rows)
        self.total = _plus(self.total, x.sum(dim=0))
        if self.weights is not None:
            self.weighted = _plus(self.weighted, torch.tensordot(self.weights[rows], x, dims=1))
        for name in self.names:
            chosen = [j for j, row in enumerate(rows) if self.groups[row] == name]
            if chosen:
                self.by_group[name] = _plus(self.by_group.get(name), x[chosen].sum(dim=0))
                self.group_counts[name] += len(chosen)
        if self.scatter is not None:
            add_outer_products(self.scatter, x, self.scaled_weights()[rows] if self.weights is not None else None)

    def add_all(self, batches: Iterable[tuple[Sequence[int], torch.Tensor]]) -> "RunningSums":
        """Add every (rows, activations) batch, e.g. ``capture_each``'s; returns self."""
        for rows, acts in batches:
            self.add(acts, rows)
        return self

    def scaled_weights(self) -> torch.Tensor:
        """The weights rescaled to sum to the row count (each set enters a pooled scatter by its size)."""
        if self.weights is None:
            return torch.ones(self.count, dtype=torch.float64)
        return self.weights * self.count / self.weights.sum()

    def mean(self) -> torch.Tensor:
        """The plain mean over the prompts, float64."""
        self._check_complete()
        return self.total / self.count

    def weighted_mean(self) -> torch.Tensor:
        """The weighted mean (the plain one without weights), float64; weights summing to 0 give non-finite values."""
        if self.weights is None:
            return self.mean()
        self._check_complete()
        return self.weighted / self.weights.sum()

    def group_means(self) -> dict[str, torch.Tensor]:
        """The mean of each group's prompts (groups sorted by name; prompts of group None in none), float64."""
        self._check_complete()
        return {name: self.by_group[name] / self.group_counts[name] for name in self.names}

    def _check_complete(self) -> None:
        if self.seen != self.count or self.total is None:
            raise ValueError(f"sums of {self.seen} prompts, expected {self.count}")


def add_outer_products(scatter: torch.Tensor, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
    """``scatter`` [..., d, d] += Σ_i w_i x_i x_iᵀ over the rows of ``x`` [b, ..., d] (float64, in place)."""
    d = x.shape[-1]
    flat = x.reshape(len(x), -1, d).transpose(0, 1)  # [C, b, d]
    if weights is not None:
        flat = flat * weights.to(flat.dtype).sqrt()[None, :, None]
    scatter.view(-1, d, d).baddbmm_(flat.transpose(1, 2), flat)


def _plus(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total.add_(value)

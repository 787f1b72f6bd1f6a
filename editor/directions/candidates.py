"""Every (position, layer) candidate's stored vector from the two prompt sets, in the least memory the estimator
allows: an estimator that reads only the sides' means (``mean_difference``), or also their pooled scatter
(``ridge_direction``, when d×d float64 per candidate is smaller than the prompts' rows), gets sums added up batch by
batch during capture (``steerfold.activations.statistics``); the others (pca, logistic, inlp) read every prompt's
activations [n, L+1, P, d]. Both give the same vectors up to float rounding.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.activations.capture import at_positions, capture, capture_each
from steerfold.activations.statistics import RunningSums
from steerfold.directions.methods.contrast import (
    Estimator, Moments, Reads, check_weights, fit_candidates, fit_every_candidate, reads,
)

Texts = tuple[list[str], list[str]]  # the refusing side's chat texts, the complying side's


def streams(what: Reads, prompts: int, hidden: int) -> bool:
    """Whether sums cost less memory than rows: always for means; for the pooled scatter (d² float64 per
    candidate, against ``prompts`` rows of d float32) when there are more than 2d prompts."""
    return what == "means" or (what == "scatter" and prompts > 2 * hidden)


def candidate_vectors(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Texts,
    layers: list[int],
    positions: list[int],
    estimator: Estimator,
    weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    orthogonalize: bool = False,
    batch_size: int = 32,
    stream: bool | None = None,
) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """``estimator`` at every candidate of ``texts``' activations (``fit_every_candidate``'s result); ``stream``
    forces sums (where the estimator allows them) or rows instead of the choice ``streams`` makes."""
    what = reads(estimator)
    hidden = model.config.get_text_config().hidden_size
    if stream is None:
        stream = streams(what, len(texts[0]) + len(texts[1]), hidden)
    reduce = at_positions(positions)
    if not stream or what == "rows":
        positive, negative = (capture(model, tokenizer, side, layers, reduce, batch_size) for side in texts)
        return fit_every_candidate(positive, negative, estimator, weights, orthogonalize)
    for side_weights, side in zip(weights or (), ("refusing", "complying")):
        check_weights(side_weights, side)  # weights summing to 0: one error line before any forward pass
    scatter = torch.zeros(len(layers), len(positions), hidden, hidden, dtype=torch.float64) if what == "scatter" else None
    sums = [RunningSums(len(side), None if weights is None else weights[i], scatter=scatter).add_all(
        capture_each(model, tokenizer, side, layers, reduce, batch_size)) for i, side in enumerate(texts)]
    shape = (len(positions), len(layers), hidden)
    return fit_candidates(moments_at(*sums, scatter), shape, estimator, orthogonalize)


def moments_at(positive: RunningSums, negative: RunningSums, scatter: torch.Tensor | None) -> Callable[[int, int], Moments]:
    """The ``Moments`` of candidate (position index, layer index) from both sides' sums [L, P, d] and the pooled
    Σ w̃ x xᵀ [L, P, d, d] (centred here: minus n μ μᵀ per side, the rescaled weights summing to n)."""
    means = positive.weighted_mean(), negative.weighted_mean()
    plain = negative.mean()

    def at(p: int, layer: int) -> Moments:
        within = None
        if scatter is not None:
            within = scatter[layer, p].clone()
            for sums, mean in zip((positive, negative), means):
                within.sub_(sums.count * torch.outer(mean[layer, p], mean[layer, p]))
        return Moments(means[0][layer, p].float(), means[1][layer, p].float(), plain[layer, p].float(), within)

    return at

"""Measurements the studies share: last-prompt-token states, refusal by category, first-token KL."""

from __future__ import annotations

from typing import Sequence

import torch

from steerfold.activations.capture import at_positions, capture
from steerfold.edit.edits import Edit
from steerfold.validation.behaviour import chat_texts, refusal, respond
from steerfold.validation.divergence import first_token_kl, runner
from steerfold.prompts import PromptRecord

MAX_NEW_TOKENS = 12  # enough for every refusal marker to show


def last_token_states(model, tokenizer, records: Sequence[PromptRecord], system: str | None = None,
                      position: int = -1) -> torch.Tensor:
    """Residual states at one prompt position (default the last token), every layer index: [n, L+1, d]."""
    layers = list(range(model.config.num_hidden_layers + 1))
    return capture(model, tokenizer, chat_texts(tokenizer, records, system), layers, at_positions([position]))[:, :, 0]


def category_means(states: torch.Tensor, records: Sequence[PromptRecord]) -> dict[str, torch.Tensor]:
    """Mean state of each category's prompts: ``{category: [L+1, d]}``."""
    names = sorted({r.category for r in records if r.category})
    return {name: states[torch.tensor([r.category == name for r in records])].mean(dim=0) for name in names}


def own_component(vectors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Per layer, ``vectors[name]`` with its projection onto the span of the other vectors removed: [L+1, d]."""
    own = vectors[name].to(torch.float64)
    others = torch.stack([v for k, v in vectors.items() if k != name], dim=1).to(torch.float64)  # [L+1, C-1, d]
    q, _ = torch.linalg.qr(others.transpose(1, 2))  # [L+1, d, C-1], orthonormal columns per layer
    return (own - (q @ (q.transpose(1, 2) @ own.unsqueeze(-1))).squeeze(-1)).to(torch.float32)


def live_layers(vectors: torch.Tensor, tolerance: float = 1e-4) -> list[int]:
    """Layer indices where a per-layer vector is not (numerically) zero: the template's last token is the same
    for every prompt at the embedding, so contrasts there vanish."""
    norms = vectors.norm(dim=-1)
    return [layer for layer in range(len(norms)) if norms[layer] > tolerance * float(norms.max())]


def refusal_rates(model, tokenizer, records: Sequence[PromptRecord], system: str | None = None,
                  edit: Edit | None = None) -> dict:
    """``{"overall", "by_category"}`` refusal of greedy responses, with ``edit`` as runtime hooks when given."""
    return refusal(respond(model, tokenizer, records, system, edit, MAX_NEW_TOKENS), records)


def harmless_kl(model, tokenizer, records: Sequence[PromptRecord], edit: Edit, system: str | None = None) -> float:
    """Mean first-token KL(base ‖ edited) over ``records``."""
    texts = chat_texts(tokenizer, records, system)
    return float(first_token_kl(runner(model), runner(model, edit), tokenizer, texts).mean())

"""Measurements the studies share: last-prompt-token states, refusal by category, first-token KL."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from steerfold.activations.capture import at_positions, capture
from steerfold.edit.edits import Edit
from steerfold.errors import BadInput
from steerfold.validation.behaviour import chat_texts, refusal, respond
from steerfold.validation.divergence import first_token_kl, runner
from steerfold.prompts import PromptRecord

MAX_NEW_TOKENS = 12  # enough for every refusal marker to show


def position_states(model, tokenizer, records: Sequence[PromptRecord], positions: Sequence[int],
                    system: str | None = None) -> torch.Tensor:
    """Residual states at prompt positions (negative: from the end), every layer index: [n, L+1, P, d]."""
    layers = list(range(model.config.num_hidden_layers + 1))
    return capture(model, tokenizer, chat_texts(tokenizer, records, system), layers, at_positions(list(positions)))


def last_token_states(model, tokenizer, records: Sequence[PromptRecord], system: str | None = None,
                      position: int = -1) -> torch.Tensor:
    """Residual states at one prompt position (default the last token), every layer index: [n, L+1, d]."""
    return position_states(model, tokenizer, records, [position], system)[:, :, 0]


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
                  edit: Edit | None = None, max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """``{"overall", "by_category"}`` refusal of greedy responses, with ``edit`` as runtime hooks when given."""
    return refusal(respond(model, tokenizer, records, system, edit, max_new_tokens), records)


Layer = Union[int, float]  # a layer index (int), or a fraction of the model's depth (float in (0, 1])


def check_layer(value: Layer) -> Layer:
    """A recipe's layer: an index ≥ 1 or a fraction of depth in (0, 1] (the contrast vanishes at index 0)."""
    if isinstance(value, bool) or (isinstance(value, int) and value < 1) or (isinstance(value, float) and not 0 < value <= 1):
        raise ValueError(f"a layer is an index ≥ 1 (e.g. 3) or a fraction of depth in (0, 1] (e.g. 0.75), got {value!r}")
    return value


def layer_index(value: Layer, depth: int) -> int:
    """The residual-stream index of a recipe's layer on a model with ``depth`` blocks (a fraction rounds, at least 1)."""
    return value if isinstance(value, int) else max(1, round(value * depth))


def window_indices(window: tuple[Layer, Layer], depth: int, where: str) -> tuple[int, int]:
    """A window [first, last] as indices within 1..depth; a bad window is one error line."""
    first, last = (layer_index(v, depth) for v in window)
    if not 1 <= first <= last <= depth:
        raise BadInput(f"study {where} window {list(window)} is layers {first}..{last}: choose 1 ≤ first ≤ last ≤ {depth} "
                       f"(indices, or fractions of depth such as [0.25, 0.5])")
    return first, last


def harmless_kl(model, tokenizer, records: Sequence[PromptRecord], edit: Edit, system: str | None = None) -> float:
    """Mean first-token KL(base ‖ edited) over ``records``."""
    texts = chat_texts(tokenizer, records, system)
    return float(first_token_kl(runner(model), runner(model, edit), tokenizer, texts).mean())

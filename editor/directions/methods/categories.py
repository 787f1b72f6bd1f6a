"""Per-harm-category directions and how alike they are across categories and layers.

``category_directions`` takes per-prompt activations [n, L+1, d] at one position: for each category of the harmful
prompts, the mean of that category minus the mean of all harmless prompts, at every layer index.
``category_similarity`` gives their cosine matrix per layer index; ``similarity_markdown`` the report table.
"""

from __future__ import annotations

from typing import Sequence

import torch

from steerfold.errors import BadInput


def category_directions(
    harmful: torch.Tensor, categories: Sequence[str | None], harmless: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{category: mean(harmful of category) − mean(harmless)}``, each [L+1, d], categories sorted by name.

    Prompts without a category count in no category.
    """
    names = category_names(categories)
    baseline = harmless.mean(dim=0)
    out = {}
    for name in names:
        rows = torch.tensor([c == name for c in categories])
        out[name] = harmful[rows].mean(dim=0) - baseline
    return out


def category_names(categories: Sequence[str | None]) -> list[str]:
    """The harm categories, sorted; none at all is one error line naming the fix."""
    names = sorted({c for c in categories if c is not None})
    if not names:
        raise BadInput("per_category needs harm categories: give the harmful prompts a 'category' field (jsonl or csv)")
    return names


def category_similarity(directions: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cosine similarity between categories at every layer index: [L+1, C, C] (NaN where a direction is zero)."""
    stacked = torch.stack(list(directions.values()), dim=1).to(torch.float64)  # [L+1, C, d]
    norms = stacked.norm(dim=-1, keepdim=True)
    unit = stacked / norms.where(norms > 0, torch.tensor(float("nan"), dtype=torch.float64))
    return (unit @ unit.transpose(1, 2)).to(torch.float32)


def similarity_markdown(names: Sequence[str], similarity: torch.Tensor, title: str = "Per-category directions") -> str:
    """A markdown report: one row per pair of categories, one column per layer index, cells the cosine."""
    layers = range(similarity.shape[0])
    lines = [
        f"# {title}",
        "",
        "Cosine similarity between the categories' difference-of-means directions (category mean minus harmless mean) "
        "at each layer index (0 = embedding output, l = output of block l-1); n/a where a direction is zero.",
        "",
        "| categories | " + " | ".join(str(layer) for layer in layers) + " |",
        "|---|" + "---:|" * len(layers),
    ]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            cells = [_cell(float(similarity[layer, i, j])) for layer in layers]
            lines.append(f"| {names[i]} · {names[j]} | " + " | ".join(cells) + " |")
    if len(names) < 2:
        lines.append("| (one category: nothing to compare) |" + " |" * len(layers))
    return "\n".join(lines) + "\n"


def _cell(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"

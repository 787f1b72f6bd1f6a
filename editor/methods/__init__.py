"""Fitting methods: their registry (``registry``), options (``options``) and the math behind them.

- ``means``: difference of means over prompts and persona vectors over responses (activation-level helpers);
- ``contrast``: one candidate's refusing/complying activations, and turning an estimate into a stored vector;
- ``estimators``: mean difference, PCA of paired differences, logistic probe, ridge mean difference;
- ``inlp``: iterative nullspace projection and its two edits; ``categories``: per-category directions and report;
- ``scorers``: refusal-confidence scorers (markers, a judge model) that weight the ridge method's means.

Importing the package is light (no torch): the CLI and recipe validation list and check method names without
loading the model stack. The names of the former ``editor.methods`` module load on first use.
"""

from __future__ import annotations

from typing import Any

_MEANS = ("mean_activations", "difference_in_means", "response_batches", "response_means", "persona_vector")

__all__ = list(_MEANS)


def __getattr__(name: str) -> Any:
    if name in _MEANS:
        from editor.methods import means

        return getattr(means, name)
    raise AttributeError(f"module 'editor.methods' has no attribute {name!r}")

"""The registry of fitting methods: each name, what prompts it reads, and the job that fits it.

Names are the values of ``steerfold fit --method`` and of a recipe's ``fit.method``; hyphens and underscores are
interchangeable (``per-category`` = ``per_category``). An entry names its job as ``"module:function"`` and imports
it only when a fit runs, so listing and validating methods costs no torch import. A job takes
``editor.directions.fit.FitInputs`` and returns ``editor.directions.fit.Fitted``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

from steerfold.errors import BadInput

Needs = Literal["contrast", "persona"]  # harmful + harmless prompt sets, or persona prompts


@dataclass(frozen=True)
class Method:
    """One fitting method: its name, a one-line summary, the prompts it reads, and its job."""

    name: str
    summary: str
    needs: Needs
    job: str  # "module:function" taking FitInputs and returning Fitted

    def load(self) -> Callable[..., Any]:
        module, _, function = self.job.partition(":")
        return getattr(importlib.import_module(module), function)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("diff_in_means", "difference of harmful and harmless mean activations (Arditi et al.)", "contrast",
           "steerfold.directions.fit:fit_diff_in_means"),
    Method("pca", "first principal component of paired harmful − harmless differences", "contrast", "steerfold.directions.fit:fit_pca"),
    Method("logistic", "unit weight vector of an L2-regularised logistic probe", "contrast", "steerfold.directions.fit:fit_logistic"),
    Method("ridge", "(Σ + λ·tr(Σ)/d·I)⁻¹(μ_refuse − μ_comply), optionally confidence-weighted (scorer)", "contrast",
           "steerfold.directions.fit:fit_ridge"),
    Method("inlp", "iterative nullspace projection: k probe directions as an orthonormal basis", "contrast",
           "steerfold.directions.fit:fit_inlp"),
    Method("per_category", "difference of means of each harm category vs harmless, with a cosine report", "contrast",
           "steerfold.directions.averages:fit_per_category"),
    Method("persona_vector", "mean response activation under a persona minus under another", "persona",
           "steerfold.directions.averages:fit_persona_vector"),
)}


def canonical(name: str) -> str:
    """The registry spelling of a method name (lower case, underscores)."""
    return name.strip().lower().replace("-", "_")


def unknown_method(name: str) -> str:
    return f"unknown method '{name}': choose one of {', '.join(METHODS)}"


def get_method(name: str) -> Method:
    """The registered method called ``name``; an unknown name is one error line listing the choices."""
    method = METHODS.get(canonical(name))
    if method is None:
        raise BadInput(unknown_method(name))
    return method

"""Study recipes: ``name``, ``model`` and a ``study`` block whose ``kind`` picks the study (see ``SPECS``).

``steerfold run`` hands a recipe with a ``study`` key here: the study runs on the model and writes
``OUT/results.json`` (the claims) and ``OUT/report.md`` atomically.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Callable, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerfold.errors import BadInput
from steerfold.research.studies.categories import CategoriesSpec
from steerfold.research.studies.methods_compare import MethodsSpec
from steerfold.research.studies.persona_gating import PersonaGatingSpec
from steerfold.research.studies.targeted import TargetedSpec

SPECS: dict[str, type[BaseModel]] = {
    "persona-gating": PersonaGatingSpec,
    "harm-categories": CategoriesSpec,
    "ablation-vs-inlp": MethodsSpec,
    "targeted-control": TargetedSpec,
}
StudySpec = Annotated[Union[PersonaGatingSpec, CategoriesSpec, MethodsSpec, TargetedSpec], Field(discriminator="kind")]


class StudyRecipe(BaseModel):
    """A study as a file. The studies read the organism's prompt splits, so the model is the organism (or a
    rebuilt organism's folder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "steerfold study"
    model: str = "organism"
    study: StudySpec

    @field_validator("model", mode="before")
    @classmethod
    def model_path(cls, value):
        return value.get("path") if isinstance(value, dict) else value


def is_study(data: dict) -> bool:
    return "study" in data


def describe(error: dict, source: str, study_kind: object) -> str:
    """One line naming the key path, what is wrong, and the fix."""
    path = [str(p) for p in error["loc"] if p not in SPECS]  # drop the discriminator's own level
    key = ".".join(path) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = SPECS.get(study_kind) if path[:1] == ["study"] else StudyRecipe
        known = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(path[-1], known, n=1)
        return f"{source}: unknown key '{key}': " + (f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}")
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return f"{source}: study.kind must be one of {', '.join(SPECS)}"
    if error["type"] == "missing":
        return f"{source}: '{key}' is required: add it"
    return f"{source}: {key}: {error['msg'].removeprefix('Value error, ')}"


def load_study_recipe(path: Path, data: dict) -> StudyRecipe:
    """Check a study recipe already read from ``path``; any problem is one SteerfoldError line."""
    try:
        return StudyRecipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        kind = data.get("study", {}).get("kind") if isinstance(data.get("study"), dict) else None
        raise BadInput(describe(errors[0], str(path), kind) + more) from None


def run_study_recipe(path: Path, data: dict, out: Path, overwrite: bool = False,
                     say: Callable[[str], None] = print) -> dict:
    """Run the study a recipe names on its model; write ``out/results.json`` and ``out/report.md``."""
    import torch

    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.research.organism import SHIPPED_CHECKPOINT
    from steerfold.artifacts.outputs import open_output
    from steerfold.research.studies import run_study, write_study

    recipe = load_study_recipe(path, data)
    folder = SHIPPED_CHECKPOINT if recipe.model == "organism" else Path(recipe.model)
    if not (folder / "config.json").is_file():
        raise BadInput(f"{path}: model: {recipe.model} is not a checkpoint folder: use 'organism' or a rebuilt organism's folder")
    with open_output(out, "folder", [folder, path], overwrite) as tmp:
        torch.manual_seed(0)
        model, tokenizer = load_model(folder), load_tokenizer(folder)
        say(f"[study] {recipe.study.kind} on {recipe.model}")
        result = run_study(model, tokenizer, recipe.study)
        write_study(tmp, result)
    for claim in result.claims:
        say(f"  {'holds' if claim.holds else 'does not hold'}: {claim.claim}")
    return result.as_dict()

"""Study recipes: ``name``, ``model`` and a ``study`` block whose ``kind`` picks the study (see ``SPECS``).

``steerfold run`` hands a recipe with a ``study`` key here: the study runs on the model and writes
``OUT/results.json`` (the claims) and ``OUT/report.md`` atomically.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Callable, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerfold.errors import BadInput, SteerfoldError
from steerfold.research.studies.categories import CategoriesSpec
from steerfold.research.studies.inputs import StudyPrompts
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
    """A study as a file: the model (the organism, a local folder or a Hub id), its prompts (without a ``prompts``
    section, the organism's splits), the response length refusal is read from, and the study."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "steerfold study"
    model: str = "organism"
    prompts: StudyPrompts | None = None
    max_new_tokens: int = Field(default=12, gt=0, description="tokens of each greedy response read for refusal markers")
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


def study_model_folder(recipe: StudyRecipe, path: Path, model: str | None) -> Path:
    """The local folder of the study's model: ``model`` (the command line's) or the recipe's; a Hub id is fetched,
    a .gguf converted once."""
    from steerfold.hub import looks_like_repo_id, resolve_model
    from steerfold.models.checkpoint import open_model_folder
    from steerfold.research.organism import SHIPPED_CHECKPOINT

    name = model or recipe.model
    if name == "organism":
        return SHIPPED_CHECKPOINT
    if not Path(name).exists() and not looks_like_repo_id(name):
        raise BadInput(f"{path}: model: {name} is not a checkpoint folder, a .gguf file or a Hub id: use 'organism', "
                       f"a local folder or owner/name")
    folder = resolve_model(name)
    try:
        open_model_folder(folder)
    except SteerfoldError as exc:
        raise BadInput(f"{path}: model: {exc}") from None
    return folder


def run_study_recipe(path: Path, data: dict, out: Path, overwrite: bool = False,
                     say: Callable[[str], None] = print, model: str | None = None, placement: dict | None = None) -> dict:
    """Run the study a recipe names on its model (``model``, ``placement``: the command line's overrides); write
    ``out/results.json``, ``out/report.md`` and the study's plots."""
    import torch

    from steerfold.artifacts.outputs import open_output
    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.models.placement import Placement
    from steerfold.research.studies import run_study, write_study
    from steerfold.research.studies.inputs import study_inputs

    recipe = load_study_recipe(path, data)
    inputs = study_inputs(recipe.prompts, path.parent, recipe.max_new_tokens)
    folder = study_model_folder(recipe, path, model)
    if check := getattr(recipe.study, "check", None):
        from transformers import AutoConfig

        check(inputs, AutoConfig.from_pretrained(folder).get_text_config().num_hidden_layers)
    with open_output(out, "folder", [folder, path], overwrite) as tmp:
        torch.manual_seed(0)
        model_, tokenizer = load_model(folder, placement=Placement.model_validate(placement or {})), load_tokenizer(folder)
        say(f"[study] {recipe.study.kind} on {model or recipe.model}")
        result = run_study(model_, tokenizer, recipe.study, inputs)
        write_study(tmp, result)
    for claim in result.claims:
        say(f"  {'holds' if claim.holds else 'does not hold'}: {claim.claim}")
    return result.as_dict()

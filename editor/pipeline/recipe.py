"""Recipes: one YAML file names every stage (model, prompts, fit, edit, validate, export, push).

The schema is strict pydantic: an unknown or misspelled key, a wrong type or a missing file is one error line
naming the key path and the fix.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from steerfold.edit.spec import RecipeEdit, EditSpec
from steerfold.models.placement import Placement
from steerfold.errors import BadInput, SteerfoldError
from steerfold.directions.methods.options import FitOptions
from steerfold.directions.methods.registry import METHODS
from steerfold.tuning.options import TuneOptions
from steerfold.validation.options import ValidateOptions


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Placement):
    """A local checkpoint folder, a Hub id, or the built-in organism, and where it runs (``Placement``'s fields)."""

    path: str = Field(description="local folder, Hub id (owner/name), or 'organism'")
    revision: str | None = None
    base_model_id: str | None = Field(default=None, description="Hub id the artifacts record as their base when path is a local folder")


def placement_of(spec: ModelSpec) -> Placement:
    """Where the recipe's model runs: the ``Placement`` fields of its ``model:`` section."""
    return Placement.model_validate(spec.model_dump(include=set(Placement.model_fields)))


class PromptSet(Strict):
    """Prompts from a local file (jsonl, csv, txt), a Hub dataset, or a split of the organism's prompts."""

    file: str | None = None
    dataset: str | None = None
    split: str = "train"
    column: str = "prompt"
    category_column: str | None = None
    count: int | None = Field(default=None, gt=0)
    organism: str | None = Field(default=None, description="e.g. harmful/test")

    @model_validator(mode="after")
    def one_source(self) -> "PromptSet":
        sources = [s for s in (self.file, self.dataset, self.organism) if s]
        if len(sources) != 1:
            raise ValueError("give exactly one of file, dataset or organism")
        return self


class FitSpec(FitOptions):
    """The fitting options (method and its parameters, as ``steerfold fit`` takes them) and the prompt sets read."""

    harmful: str = "harmful"
    harmless: str = "harmless"
    harmful_val: str | None = None
    harmless_val: str | None = None
    prompts: str | None = None


class Thresholds(Strict):
    harmful_refusal_max: float | None = Field(default=None, ge=0, le=1)
    harmless_refusal_max: float | None = Field(default=None, ge=0, le=1)
    over_refusal_max: float | None = Field(default=None, ge=0, le=1)
    kl_first_token_max: float | None = Field(default=None, ge=0)
    coherent_compliance_min: float | None = Field(default=None, ge=0, le=1)


class ValidateSpec(ValidateOptions):
    """The validation's options (as ``steerfold validate`` takes them), the prompt sets it reads, and thresholds."""

    harmful: str = "harmful_test"
    harmless: str = "harmless_test"
    thresholds: Thresholds = Thresholds()


class TuneSpec(TuneOptions):
    """The search's options (as ``steerfold tune`` takes them; it reads fit's prompt sets) and the held-out prompt sets
    its pick and front are measured on."""

    harmful_test: str | None = None
    harmless_test: str | None = None


TUNED_EDIT_KEYS = ("scale", "attention_kernel", "mlp_kernel", "norm_preserving")  # what a trial sets


class ExportSpec(Strict):
    formats: list[Literal["merged", "lora", "cvec"]] = ["merged"]
    max_shard_size: str | None = None


class PushSpec(Strict):
    repo: str
    private: bool = False
    revision: str | None = None


class Recipe(Strict):
    """A whole edit, as a file."""

    name: str = "steerfold edit"
    model: ModelSpec
    prompts: dict[str, PromptSet]
    fit: FitSpec = FitSpec()
    edit: RecipeEdit = RecipeEdit()
    validate_: ValidateSpec | None = Field(default=None, alias="validate")
    tune: TuneSpec | None = None
    export: ExportSpec = ExportSpec()
    push: PushSpec | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("model", mode="before")
    @classmethod
    def model_shorthand(cls, value):
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def prompt_names_exist(self) -> "Recipe":
        names = [("fit.harmful", self.fit.harmful), ("fit.harmless", self.fit.harmless),
                 ("fit.harmful_val", self.fit.harmful_val), ("fit.harmless_val", self.fit.harmless_val),
                 ("fit.prompts", self.fit.prompts)]
        if self.validate_ is not None:
            names += [("validate.harmful", self.validate_.harmful), ("validate.harmless", self.validate_.harmless),
                      ("validate.over_refusal", self.validate_.over_refusal)]
        if self.tune is not None:
            names += [("tune.harmful_test", self.tune.harmful_test), ("tune.harmless_test", self.tune.harmless_test)]
            set_here = [f"edit.{key}" for key in TUNED_EDIT_KEYS if key in self.edit.model_fields_set]
            if self.tune.norm_preserving != "off" and "lora" in self.export.formats:
                raise ValueError("export.formats has lora, which cannot carry a norm-preserving ablation the tune may "
                                 "pick: set tune.norm_preserving: off, or export merged only")
            if set_here or self.edit.kind != "ablation":
                raise ValueError(f"tune chooses the ablation's {', '.join(f'edit.{k}' for k in TUNED_EDIT_KEYS)}: drop "
                                 f"{', '.join(set_here) or 'edit.kind'} from the recipe, or drop tune")
        if METHODS[self.fit.method].needs == "persona":  # it reads harmless prompts only to orthogonalize against them
            kept = {"fit.prompts"} | ({"fit.harmless"} if self.fit.orthogonalize != "none" else set())
            names = [n for n in names if n[0] in kept]
        for where, name in names:
            if name is not None and name not in self.prompts:
                raise ValueError(f"{where} names prompt set '{name}', which is not under prompts "
                                 f"(defined: {', '.join(sorted(self.prompts))})")
        if self.validate_ is not None and not {"merged", "lora"} & set(self.export.formats):
            raise ValueError("validate loads the edited model: add merged or lora to export.formats")
        return self


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _schema_at(path: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``path`` (to suggest the key that was meant)."""
    if path[:1] == ("prompts",):
        return PromptSet if len(path) == 3 else None
    model: type[BaseModel] = Recipe
    for part in path[:-1]:
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        annotation = getattr(field, "annotation", None)
        nested = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def describe_error(error: dict, source: str) -> str:
    """One line naming the key path, what is wrong, and the fix."""
    path = tuple(p for p in error["loc"] if p not in ("function-after", "function-before"))
    key = ".".join(str(p) for p in path) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _schema_at(path)
        known = _field_names(owner) if owner else []
        close = difflib.get_close_matches(str(path[-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}" if known else "remove it"
        return f"{source}: unknown key '{key}': {hint}"
    if error["type"] == "missing":
        return f"{source}: '{key}' is required: add it"
    message = error["msg"].removeprefix("Value error, ")
    return f"{source}: {key}: {message}" if path else f"{source}: {message}"


def read_mapping(path: str | Path) -> dict:
    """The YAML mapping a recipe file holds; a missing file or bad YAML is one SteerfoldError line."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"recipe {path} does not exist: pass a YAML recipe (see recipes/)")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not a text file: pass a YAML recipe (see recipes/)") from None
    except RecursionError:
        raise BadInput(f"{path} nests too deeply to be a recipe: write it as in recipes/") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BadInput(f"{path} is not valid YAML{where}: fix the syntax") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} must be a YAML mapping with model, prompts, fit, edit… keys")
    return data


def with_overrides(data: dict, model: str | None = None, prompts: dict[str, str] | None = None,
                   placement: dict | None = None) -> dict:
    """A recipe's mapping with the command line's ``--model``, ``--prompts NAME=FILE`` and placement options
    (``--device``…, over ``model.device``…) applied. The model given replaces ``model.path``; a Hub id the recipe
    named stays the base its artifacts record (unless ``model.base_model_id`` says otherwise), so a recipe runs
    offline on a local copy of the model it names."""
    data = dict(data)
    if placement:
        spec = data.get("model")
        spec = {"path": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else {}
        data["model"] = {**spec, **{key: str(value) for key, value in placement.items()}}
    if model is not None:
        from steerfold.hub import looks_like_repo_id

        spec = data.get("model")
        spec = {"path": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else {}
        named = spec.get("path")
        if isinstance(named, str) and looks_like_repo_id(named) and not spec.get("base_model_id"):
            spec["base_model_id"] = named
        spec.pop("revision", None)
        data["model"] = {**spec, "path": str(model)}
    sets = dict(data.get("prompts") or {}) if isinstance(data.get("prompts"), dict) else {}
    for name, file in (prompts or {}).items():
        if name not in sets:
            raise BadInput(f"--prompts {name}={file}: the recipe has no prompt set '{name}' (its sets: "
                           f"{', '.join(sorted(sets)) or 'none'}): name one of them")
        if not Path(file).is_file():
            raise BadInput(f"--prompts {name}={file}: {file} does not exist: pass a jsonl, csv or txt prompt file")
        kept = {key: value for key, value in (sets[name] or {}).items() if key == "count"}
        sets[name] = {**kept, "file": str(Path(file).resolve())}
    if prompts:
        data["prompts"] = sets
    return data


def load_recipe(path: str | Path, model: str | None = None, prompts: dict[str, str] | None = None,
                placement: dict | None = None) -> Recipe:
    """Read and check a recipe file (with the command line's overrides, ``with_overrides``); any problem is one
    SteerfoldError line."""
    path = Path(path)
    data = with_overrides(read_mapping(path), model, prompts, placement)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BadInput(describe_error(errors[0], str(path)) + more) from None
    for name, prompt_set in recipe.prompts.items():
        if prompt_set.file and not (path.parent / prompt_set.file).is_file() and not Path(prompt_set.file).is_file():
            raise BadInput(f"{path}: prompts.{name}.file: {prompt_set.file} does not exist: fix the path "
                                 "(relative paths are read from the recipe's folder)")
    check_edit(recipe, path)
    if recipe.validate_ is not None:
        try:
            recipe.validate_.check("recipe")
        except SteerfoldError as exc:
            raise BadInput(f"{path}: {exc}") from None
    validate = recipe.validate_
    files = [("edit.condition", recipe.edit.condition), ("validate.markers", validate and validate.markers),
             ("validate.perplexity_text", validate and validate.perplexity_text != "none" and validate.perplexity_text)]
    for key, file in files:
        if file and not (path.parent / file).is_file() and not Path(file).is_file():
            raise BadInput(f"{path}: {key}: {file} does not exist: fix the path "
                           "(relative paths are read from the recipe's folder)")
    return recipe


def check_edit(recipe: Recipe, path: Path) -> None:
    """The edit's conflicts (the rules ``steerfold edit`` applies), refused when the recipe is loaded and by
    ``--dry-run``, before any stage runs, in the recipe's own keys."""
    spec = edit_spec(recipe.edit, Path(recipe.edit.condition) if recipe.edit.condition else None, Path("model"),
                     Path("direction"), Path("out"), "merged", recipe.export.max_shard_size)  # any format: same conflicts
    try:
        spec.check("recipe")
    except SteerfoldError as exc:
        raise BadInput(f"{path}: {exc}") from None


def edit_spec(edit: RecipeEdit, condition: Path | None, folder: Path, direction: Path, out: Path, fmt: str,
              max_shard_size: str | None = None, base_model_id: str | None = None, trial: dict | None = None) -> EditSpec:
    """The ``EditSpec`` of one export of a recipe: its ``edit:`` section (with what a tune's picked ``trial`` sets),
    one of ``export.formats`` and ``export.max_shard_size``, the fitted direction and the resolved condition file (the
    recipe's ``edit.condition`` is relative to its folder)."""
    section = {name: getattr(edit, name) for name in type(edit).model_fields if name != "condition"} | (trial or {})
    return EditSpec(model=str(folder), direction=direction, out=out, format=fmt, condition=condition, overwrite=True,
                    max_shard_size=max_shard_size, base_model_id=base_model_id, **section)


def recipe_base(recipe: Recipe, folder: Path):
    """The base the recipe's artifacts record: model.base_model_id, the Hub id in model.path, or the cache folder's."""
    from steerfold.hub import identify_base

    return identify_base(recipe.model.path, folder, recipe.model.base_model_id, recipe.model.revision)


def edit_condition_path(spec: RecipeEdit, base: Path) -> Path | None:
    """The recipe's condition direction file (relative paths are read from the recipe's folder), if any."""
    if spec.condition is None:
        return None
    return base / spec.condition if (base / spec.condition).is_file() else Path(spec.condition)


def fit_sets(fit: FitSpec) -> dict[str, str]:
    """The prompt sets the recipe's fit reads, by ``FitInputs`` field: what the method needs, nothing more."""
    from steerfold.directions.methods.registry import METHODS

    roles = {"harmful": fit.harmful, "harmless": fit.harmless, "harmful_val": fit.harmful_val,
             "harmless_val": fit.harmless_val, "prompts": fit.prompts}
    if METHODS[fit.method].needs == "persona":
        roles = {"prompts": fit.prompts, "harmless": fit.harmless if fit.orthogonalize != "none" else None}
    return {role: name for role, name in roles.items() if name}

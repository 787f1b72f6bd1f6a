"""``steerfold run``: execute a recipe stage by stage, caching each stage by the content hash of its inputs.

Stages: prompts → fit → export (merged / lora) → validate → report → push. A stage's key hashes the model's
identity, the prompt contents and the stage's parameters (and the keys of the stages it reads), so a repeated or
resumed run skips finished work and recomputes exactly what changed. Exports are written atomically; an
interrupted run leaves finished stages in ``OUT/.cache`` and no partial export. A recipe with a ``study`` key
runs that study instead (``editor.research.studies.recipe``): it writes ``OUT/results.json`` and ``OUT/report.md``.
"""

from __future__ import annotations

from pathlib import Path

from steerfold.errors import BadInput, SteerfoldError
from steerfold.pipeline.recipe import FitSpec, Recipe, edit_condition_path
from steerfold.pipeline.state import Say, check_out, is_run_folder, start_over
from steerfold.pipeline.prompt_sets import load_prompt_set


def _judge_folder(fit: FitSpec) -> Path | None:
    """The local folder of the fit's judge model (a Hub judge is fetched here, before any stage runs)."""
    if not fit.judge or fit.scorer != "judge":
        return None
    from steerfold.hub import resolve_model

    return resolve_model(fit.judge)


def model_folder(recipe: Recipe) -> Path:
    """The local folder of the recipe's model (the organism, a folder, or a Hub snapshot)."""
    if recipe.model.path == "organism":
        from steerfold.research.organism import SHIPPED_CHECKPOINT

        return SHIPPED_CHECKPOINT
    from steerfold.models.checkpoint import open_model_folder
    from steerfold.hub import resolve_model

    folder = resolve_model(recipe.model.path, recipe.model.revision)
    try:
        open_model_folder(folder)
    except SteerfoldError as exc:
        raise BadInput(f"recipe model.path: {exc}") from None
    return folder


def recipe_inputs(recipe: Recipe, recipe_path: Path, folder: Path, judge: Path | None) -> list[Path | None]:
    """Every file or folder a recipe reads, which its run folder must stay apart from."""
    base = recipe_path.parent
    files = [base / s.file if (base / s.file).is_file() else Path(s.file) for s in recipe.prompts.values() if s.file]
    return [recipe_path, folder, judge, edit_condition_path(recipe.edit, base), *files]


def run_recipe(recipe_path: Path, out: Path, resume: bool = False, overwrite: bool = False, say: Say = print,
               model: str | None = None, prompts: dict[str, str] | None = None, placement: dict | None = None) -> dict:
    """Run every stage of a recipe into ``out`` (``model`` and ``prompts``: the command line's overrides of the
    recipe's model, prompt files and placement); returns the report."""
    from steerfold.artifacts.outputs import open_output
    from steerfold.pipeline.recipe import load_recipe, read_mapping
    from steerfold.research.studies.recipe import is_study, run_study_recipe

    data = read_mapping(recipe_path)
    if is_study(data):
        if resume:
            raise BadInput(f"{recipe_path} is a study: it has no stages to resume; pass --overwrite to run it again into {out}")
        if prompts:
            raise BadInput(f"{recipe_path} is a study: --prompts names an edit recipe's prompt sets; "
                           f"change the study's prompts section instead")
        return run_study_recipe(recipe_path, data, out, overwrite, say, model, placement)
    recipe = load_recipe(recipe_path, model, prompts, placement)
    check_out(out, resume, overwrite)
    folder, judge = model_folder(recipe), _judge_folder(recipe.fit)  # downloads, if any, before the run folder exists
    sets = {name: load_prompt_set(spec, recipe_path.parent) for name, spec in recipe.prompts.items()}
    inputs = recipe_inputs(recipe, recipe_path, folder, judge)
    with open_output(out, "workdir", inputs, overwrite or resume, recognise=is_run_folder):
        if overwrite:
            start_over(out)
        from steerfold.pipeline.stages import RecipeRun

        return RecipeRun(recipe, recipe_path, out, folder, judge, sets, say).run()



"""``steerfold run --dry-run``: what a recipe would do, without loading a model or touching the network."""

from __future__ import annotations

import json
from pathlib import Path

from steerfold.artifacts.outputs import RUN_STATE
from steerfold.pipeline.estimates import estimate_lines
from steerfold.pipeline.recipe import Recipe, fit_sets, placement_of
from steerfold.pipeline.prompt_sets import load_prompt_set
from steerfold.pipeline.run import model_folder
from steerfold.pipeline.state import RunState


def plan_recipe(recipe_path: Path, out: Path, model: str | None = None, prompts: dict[str, str] | None = None,
                placement: dict | None = None) -> list[str]:
    """What ``run`` would do, without loading a model or touching the network: stages, downloads, estimates."""
    from steerfold.hub import looks_like_repo_id
    from steerfold.pipeline.recipe import load_recipe, read_mapping
    from steerfold.research.studies.recipe import is_study, load_study_recipe

    data = read_mapping(recipe_path)
    if is_study(data):
        from steerfold.research.studies.inputs import study_inputs

        study = load_study_recipe(recipe_path, data)
        name = model or study.model
        inputs = study_inputs(study.prompts, recipe_path.parent, study.max_new_tokens)
        fetch = name != "organism" and not Path(name).exists() and looks_like_repo_id(name)
        return [f"study {study.study.kind} ({study.name}) on {name}: would run",
                "prompts: " + ", ".join(f"{key} {n}" for key, n in inputs.counts().items()),
                f"writes {out / 'results.json'} (claims) and {out / 'report.md'}; "
                + (f"download: model {name} (unless in the Hugging Face cache)" if fetch else "nothing is downloaded")]
    recipe = load_recipe(recipe_path, model, prompts, placement)
    lines = [f"recipe {recipe.name}: model {recipe.model.path}" + (f" @ {recipe.model.revision}" if recipe.model.revision else "")]
    config = _config_offline(recipe)
    if recipe.model.path != "organism" and looks_like_repo_id(recipe.model.path):
        lines.append(f"download: model {recipe.model.path} (unless in the Hugging Face cache)")
    judge = recipe.fit.judge if recipe.fit.scorer == "judge" else None
    if judge and looks_like_repo_id(judge):
        lines.append(f"download: judge model {judge} (unless in the Hugging Face cache)")
    for name, spec in recipe.prompts.items():
        source = spec.file or spec.organism or f"Hub dataset {spec.dataset} [{spec.split}] column {spec.column}"
        if spec.dataset:
            lines.append(f"download: dataset {spec.dataset} split {spec.split}")
        lines.append(f"prompts {name}: {source}" + (f", first {spec.count}" if spec.count else ""))
    state = RunState.open(out) if (out / RUN_STATE).is_file() else None
    first = f"tune ({recipe.tune.trials} trials)" if recipe.tune is not None else "fit"
    stages = [first] + [f"export:{f}" for f in recipe.export.formats] + (["validate"] if recipe.validate_ else []) + ["report"]
    stages += ["push"] if recipe.push else []
    for name in stages:
        status = "finished before (re-checked by key on --resume)" if state and name.split()[0] in state.done else "would run"
        lines.append(f"stage {name}: {status}")
    new_tokens = recipe.validate_.max_new_tokens if recipe.validate_ else 64
    lines += estimate_lines(config, recipe.export.formats, placement_of(recipe.model), _fit_prompt_count(recipe, recipe_path.parent),
                            new_tokens=new_tokens)
    return lines


def _fit_prompt_count(recipe: Recipe, base: Path) -> int | None:
    """How many harmful and harmless prompts the fit reads, when they are local (None when a Hub dataset is)."""
    total = 0
    for role in ("harmful", "harmless"):
        name = fit_sets(recipe.fit).get(role)
        if name is None:
            continue
        spec = recipe.prompts[name]
        if spec.dataset:
            return None
        total += len(load_prompt_set(spec, base))
    return total or None


def _config_offline(recipe: Recipe) -> dict | None:
    """The model's config.json from a local folder, the organism, or the Hugging Face cache; None offline."""
    path = recipe.model.path
    if path == "organism" or Path(path).is_dir():
        folder = model_folder(recipe)
        return json.loads((folder / "config.json").read_text())
    from steerfold.hub import cached_file

    cached = cached_file(path, "config.json", recipe.model.revision)
    return json.loads(cached.read_text()) if cached else None

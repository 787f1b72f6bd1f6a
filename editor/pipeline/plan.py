"""``steerfold run --dry-run``: what a recipe would do, without loading a model or touching the network."""

from __future__ import annotations

import json
from pathlib import Path

from steerfold.artifacts.outputs import RUN_STATE
from steerfold.pipeline.recipe import Recipe
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
        study = load_study_recipe(recipe_path, data)
        return [f"study {study.study.kind} ({study.name}) on {study.model}: would run",
                f"writes {out / 'results.json'} (claims) and {out / 'report.md'}; nothing is downloaded"]
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
    stages = ["fit"] + [f"export:{f}" for f in recipe.export.formats] + (["validate"] if recipe.validate_ else []) + ["report"]
    stages += ["push"] if recipe.push else []
    for name in stages:
        status = "finished before (re-checked by key on --resume)" if state and name in state.done else "would run"
        lines.append(f"stage {name}: {status}")
    lines += estimate_lines(config, recipe.export.formats)
    return lines


def _config_offline(recipe: Recipe) -> dict | None:
    """The model's config.json from a local folder, the organism, or the Hugging Face cache; None offline."""
    path = recipe.model.path
    if path == "organism" or Path(path).is_dir():
        folder = model_folder(recipe)
        return json.loads((folder / "config.json").read_text())
    from steerfold.hub import cached_file

    cached = cached_file(path, "config.json", recipe.model.revision)
    return json.loads(cached.read_text()) if cached else None


BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def estimate_lines(config: dict | None, formats: list[str]) -> list[str]:
    """Disk and memory estimates from a config (parameter count from the shapes of a decoder-only model)."""
    if not config:
        return ["estimate: the model's config.json is not available offline (not in the Hugging Face cache)"]
    config = config.get("text_config", config)
    d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    inter = config.get("intermediate_size", 4 * d)
    heads = config.get("num_attention_heads", 1)
    head_dim = config.get("head_dim") or d // heads
    kv = config.get("num_key_value_heads", heads)
    experts = config.get("num_local_experts") or config.get("num_experts") or 1
    moe_inter = config.get("moe_intermediate_size", inter)
    attention = d * head_dim * heads * 2 + 2 * d * head_dim * kv
    mlp = 3 * d * (moe_inter * experts if experts > 1 else inter)
    embeddings = vocab * d * (1 if config.get("tie_word_embeddings") else 2)
    params = embeddings + layers * (attention + mlp)
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    size = params * BYTES.get(dtype, 4)
    gb = lambda n: f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
    count = f"{params / 1e9:.2f} B" if params >= 1e8 else f"{params / 1e6:.2f} M"
    lines = [f"estimate: about {count} parameters, {gb(size)} of weights in {dtype}"]
    if "merged" in formats:
        lines.append(f"estimate: merged export writes about {gb(size)}, streaming (memory: about two of its largest tensors)")
    lines.append(f"estimate: fit and validate hold the model in float32: about {gb(params * 4)} of memory")
    return lines

"""``steerfold run``: execute a recipe stage by stage, caching each stage by the content hash of its inputs.

Stages: prompts → fit → export (merged / lora) → validate → report → push. A stage's key hashes the model's
identity, the prompt contents and the stage's parameters (and the keys of the stages it reads), so a repeated or
resumed run skips finished work and recomputes exactly what changed. Exports are written atomically; an
interrupted run leaves finished stages in ``OUT/.cache`` and no partial export. A recipe with a ``study`` key
runs that study instead (``editor.research.studies.recipe``): it writes ``OUT/results.json`` and ``OUT/report.md``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from editor.errors import SteerfoldError
from editor.artifacts.outputs import RUN_STATE
from editor.prompts import PromptRecord, load_prompts
from editor.pipeline.recipe import FitSpec, PromptSet, Recipe, RecipeEdit, edit_spec

Say = Callable[[str], None]


def digest(*parts: object) -> str:
    """Stable short hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def records_hash(records: list[PromptRecord]) -> str:
    return digest([(r.text, r.category) for r in records])


def model_identity(folder: Path) -> str:
    """Identity of a local checkpoint without reading its weights: config plus weight file names and sizes."""
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    return digest((folder / "config.json").read_text(), files)


def _judge_folder(fit: FitSpec) -> Path | None:
    """The local folder of the fit's judge model (a Hub judge is fetched here, before any stage runs)."""
    if not fit.judge or fit.scorer != "judge":
        return None
    from editor.hub import resolve_model

    return resolve_model(fit.judge)


def load_prompt_set(spec: PromptSet, base: Path) -> list[PromptRecord]:
    """Prompts of one set: a local file, a split of the organism's prompts, or a Hub dataset."""
    if spec.organism:
        from editor.research.organism import load_split

        kind, _, split = spec.organism.partition("/")
        try:
            records = load_split(kind, split)
        except ValueError as exc:
            raise SteerfoldError(f"organism prompts '{spec.organism}': {exc}: write e.g. harmful/test") from None
    elif spec.file:
        path = base / spec.file if (base / spec.file).is_file() else Path(spec.file)
        records = load_prompts(path)
    else:
        records = _hub_dataset(spec)
    return records[: spec.count] if spec.count else records


def _hub_dataset(spec: PromptSet) -> list[PromptRecord]:
    from editor.hub import load_dataset_split

    rows = load_dataset_split(spec.dataset, spec.split)
    if spec.column not in rows.column_names:
        raise SteerfoldError(f"dataset {spec.dataset} has no column '{spec.column}' (columns: {', '.join(rows.column_names)})")
    categories = rows[spec.category_column] if spec.category_column else [None] * len(rows)
    return [PromptRecord(str(t), c) for t, c in zip(rows[spec.column], categories)]


def model_folder(recipe: Recipe) -> Path:
    """The local folder of the recipe's model (the organism, a folder, or a Hub snapshot)."""
    if recipe.model.path == "organism":
        from editor.research.organism import SHIPPED_CHECKPOINT

        return SHIPPED_CHECKPOINT
    from editor.models.checkpoint import open_model_folder
    from editor.hub import resolve_model

    folder = resolve_model(recipe.model.path, recipe.model.revision)
    try:
        open_model_folder(folder)
    except SteerfoldError as exc:
        raise SteerfoldError(f"recipe model.path: {exc}") from None
    return folder


@dataclass
class RunState:
    """What a run has finished, by stage key (kept in OUT/.steerfold-run.json)."""

    path: Path
    done: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path) -> "RunState":
        file = out / RUN_STATE
        data = json.loads(file.read_text()) if file.is_file() else {}
        return cls(file, data.get("done", {}), data.get("timings", {}))

    def finish(self, stage: str, key: str, seconds: float) -> None:
        self.done[stage], self.timings[stage] = key, round(seconds, 2)
        from editor.artifacts.outputs import replace_file

        with replace_file(self.path) as tmp:
            tmp.write_text(json.dumps({"done": self.done, "timings": self.timings}, indent=2))


def is_run_folder(out: Path) -> bool:
    """A folder ``steerfold run`` made (what --resume continues and --overwrite may empty)."""
    from editor.artifacts.outputs import is_steerfold_folder

    return (out / RUN_STATE).is_file() or is_steerfold_folder(out)


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run folder needs --resume (continue) or --overwrite (start over)."""
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise SteerfoldError(f"{out} already holds a run: pass --resume to continue it, or --overwrite to start over")
    if resume and overwrite:
        raise SteerfoldError("--resume continues a run and --overwrite starts it over: pass one of them")


def start_over(out: Path) -> None:
    """Empty a run folder for --overwrite (its marker stays: the folder is still steerfold's)."""
    from editor.artifacts.outputs import LOCK, MARKER, remove

    for item in out.iterdir():
        if item.name not in (MARKER, LOCK):  # the lock is this process's
            remove(item)


def recipe_base(recipe: Recipe, folder: Path):
    """The base the recipe's artifacts record: model.base_model_id, the Hub id in model.path, or the cache folder's."""
    from editor.hub import identify_base

    return identify_base(recipe.model.path, folder, recipe.model.base_model_id, recipe.model.revision)


def recipe_inputs(recipe: Recipe, recipe_path: Path, folder: Path, judge: Path | None) -> list[Path | None]:
    """Every file or folder a recipe reads, which its run folder must stay apart from."""
    base = recipe_path.parent
    files = [base / s.file if (base / s.file).is_file() else Path(s.file) for s in recipe.prompts.values() if s.file]
    return [recipe_path, folder, judge, edit_condition_path(recipe.edit, base), *files]


def stage(state: RunState, name: str, key: str, done: Callable[[], bool], work: Callable[[], None], say: Say) -> bool:
    """Run ``work`` unless this stage already finished with the same key; returns whether it ran."""
    if state.done.get(name) == key and done():
        say(f"[{name}] cached ({key})")
        return False
    say(f"[{name}] running")
    start = time.perf_counter()
    work()
    state.finish(name, key, time.perf_counter() - start)
    say(f"[{name}] done in {time.perf_counter() - start:.1f} s")
    return True


class ThresholdFailure(SteerfoldError):
    """A validation threshold of the recipe was not met (the run's artifacts are kept)."""


def threshold_checks(report: dict, thresholds) -> list[tuple[str, bool]]:
    """Each of the recipe's validation thresholds against the report, readable, and whether it is met."""
    after, checks = report["after"], []
    limits = [("harmful_refusal", thresholds.harmful_refusal_max, max), ("harmless_refusal", thresholds.harmless_refusal_max, max),
              ("kl_first_token", thresholds.kl_first_token_max, max), ("coherent_compliance", thresholds.coherent_compliance_min, min)]
    for metric, limit, kind in limits:
        if limit is None or metric not in after:
            continue
        value = after[metric]
        met = value <= limit if kind is max else value >= limit
        sign = ("≤" if met else ">") if kind is max else ("≥" if met else "<")
        checks.append((f"{metric} {value:.3f} {sign} {limit:g}", met))
    return checks


def check_thresholds(report: dict, thresholds) -> list[str]:
    """Human-readable failures of the recipe's validation thresholds."""
    return [text for text, met in threshold_checks(report, thresholds) if not met]


def edit_condition_path(spec: RecipeEdit, base: Path) -> Path | None:
    """The recipe's condition direction file (relative paths are read from the recipe's folder), if any."""
    if spec.condition is None:
        return None
    return base / spec.condition if (base / spec.condition).is_file() else Path(spec.condition)


def fit_sets(fit: FitSpec) -> dict[str, str]:
    """The prompt sets the recipe's fit reads, by ``FitInputs`` field: what the method needs, nothing more."""
    from editor.directions.methods.registry import METHODS

    roles = {"harmful": fit.harmful, "harmless": fit.harmless, "harmful_val": fit.harmful_val,
             "harmless_val": fit.harmless_val, "prompts": fit.prompts}
    if METHODS[fit.method].needs == "persona":
        roles = {"prompts": fit.prompts, "harmless": fit.harmless if fit.orthogonalize != "none" else None}
    return {role: name for role, name in roles.items() if name}


def run_recipe(recipe_path: Path, out: Path, resume: bool = False, overwrite: bool = False, say: Say = print) -> dict:
    """Run every stage of a recipe into ``out``; returns the report."""
    from editor.artifacts.outputs import open_output
    from editor.pipeline.recipe import load_recipe, read_mapping
    from editor.research.studies.recipe import is_study, run_study_recipe

    data = read_mapping(recipe_path)
    if is_study(data):
        if resume:
            raise SteerfoldError(f"{recipe_path} is a study: it has no stages to resume; pass --overwrite to run it again into {out}")
        return run_study_recipe(recipe_path, data, out, overwrite, say)
    recipe = load_recipe(recipe_path)
    check_out(out, resume, overwrite)
    folder, judge = model_folder(recipe), _judge_folder(recipe.fit)  # downloads, if any, before the run folder exists
    sets = {name: load_prompt_set(spec, recipe_path.parent) for name, spec in recipe.prompts.items()}
    inputs = recipe_inputs(recipe, recipe_path, folder, judge)
    with open_output(out, "workdir", inputs, overwrite or resume, recognise=is_run_folder):
        if overwrite:
            start_over(out)
        return _run_stages(recipe, recipe_path, out, folder, judge, sets, say)


def _run_stages(recipe: Recipe, recipe_path: Path, out: Path, folder: Path, judge: Path | None,
                sets: dict[str, list[PromptRecord]], say: Say) -> dict:
    """The stages of a recipe, in a run folder held by this process."""
    import torch

    from editor.directions.file import load_direction_file
    from editor.artifacts.export import run_edit
    from editor.validation.report import write_report
    from editor.validation.validate import EvalSets, validate
    from editor.artifacts.card import write_card
    from editor.artifacts.formats import FORMATS
    from editor.edit.spec import in_recipe_words
    from editor.artifacts.checksums import write_checksums
    from editor.directions.fit import FitInputs, report_path as fit_report_path, run_fit, write_fitted
    from editor.directions.methods.options import FitOptions
    from editor.models.loading import load_model, load_tokenizer
    from editor.artifacts.outputs import replace_file

    (out / ".cache").mkdir(exist_ok=True)
    state = RunState.open(out)
    recorded_base = recipe_base(recipe, folder)
    identity = model_identity(folder)
    hashes = {name: records_hash(records) for name, records in sets.items()}
    cache: dict[str, object] = {}

    def base():
        if "model" not in cache:
            torch.manual_seed(0)
            cache["model"], cache["tokenizer"] = load_model(folder), load_tokenizer(folder)
        return cache["model"], cache["tokenizer"]

    fit = recipe.fit
    reads = fit_sets(fit)
    # a judge's weights decide the fit too: key on its identity (a Hub judge: its snapshot's)
    judge_identity = model_identity(judge) if judge and (judge / "config.json").is_file() else fit.judge
    fit_key = digest("fit", identity, fit.model_dump(), [hashes[n] for n in reads.values()], judge_identity)
    direction_path = out / ".cache" / f"direction-{fit_key}.safetensors"

    def do_fit() -> None:
        model, tokenizer = base()
        options = FitOptions.model_validate(fit.model_dump(include=set(FitOptions.model_fields)))
        records = {role: sets[name] for role, name in reads.items()}
        fitted = run_fit(FitInputs(model, tokenizer, options, model_name=recipe.model.path, **records))
        for warning in fitted.warnings:
            say(f"[fit] warning: {warning}")
        write_fitted(direction_path, fitted)

    stage(state, "fit", fit_key, direction_path.is_file, do_fit, say)
    shutil.copy2(direction_path, out / "direction.safetensors")
    if fit_report_path(direction_path).is_file():  # e.g. the per-category cosine report
        shutil.copy2(fit_report_path(direction_path), fit_report_path(out / "direction.safetensors"))

    edit = recipe.edit
    export_keys: dict[str, str] = {}
    edits: dict[str, dict] = {}  # by format: the edit as its card describes it (tied head, post-norm, kernels…)
    condition = edit_condition_path(edit, recipe_path.parent)
    condition_hash = hashlib.sha256(condition.read_bytes()).hexdigest() if condition else None
    for fmt in recipe.export.formats:
        key = export_keys[fmt] = digest("export", fit_key, edit.model_dump(), condition_hash, fmt, recipe.export.max_shard_size)
        target = out / fmt
        request = edit_spec(edit, condition, folder, direction_path, target, fmt, recipe.export.max_shard_size,
                            recorded_base.repo_id)
        described = out / ".cache" / f"export-{key}.json"

        def do_export(r=request, described=described) -> None:
            try:
                summary = run_edit(r, say)
            except SteerfoldError as exc:  # the library names flags; a recipe user typed keys
                raise type(exc)(in_recipe_words(str(exc))) from None
            with replace_file(described) as tmp:  # what the export's card says, for the report stage's cards
                tmp.write_text(json.dumps(summary.described, default=str))

        stage(state, f"export:{fmt}", key, lambda t=target, d=described: (t / "SHA256SUMS").is_file() and d.is_file(),
              do_export, say)
        edits[fmt] = json.loads(described.read_text())

    report: dict = {}
    if recipe.validate_ is not None:
        spec = recipe.validate_
        fmt = "merged" if "merged" in recipe.export.formats else "lora"  # the recipe schema requires one of them
        # thresholds only judge the figures: changing one re-checks the cached validation, it does not redo it
        key = digest("validate", export_keys[fmt], spec.model_dump(exclude={"thresholds"}), hashes[spec.harmful], hashes[spec.harmless])
        report_path = out / ".cache" / f"validate-{key}.json"

        def do_validate() -> None:
            model, tokenizer = base()
            check = None
            if spec.coherence == "organism":
                from editor.research.organism import coherent_compliance as check
            edited = load_model(out / fmt, base=folder)
            result = validate(model, edited, tokenizer, EvalSets(sets[spec.harmful], sets[spec.harmless]), spec.system,
                              check, spec.max_new_tokens)
            with replace_file(report_path) as tmp:
                tmp.write_text(json.dumps(result, default=str))

        stage(state, "validate", key, report_path.is_file, do_validate, say)
        report = json.loads(report_path.read_text())

    metadata = load_direction_file(direction_path).metadata
    report.update({"recipe": recipe.name, "base": recipe.model.path, "revision": recipe.model.revision,
                   "edit": edits[recipe.export.formats[0]]})
    if "selection" in metadata:
        report["selection"] = json.loads(metadata["selection"])
        report["selection_baseline"] = json.loads(metadata.get("selection_baseline", "{}"))
        report["projections"] = json.loads(metadata.get("projections", "{}"))
    def do_report() -> None:
        write_report(out, report)
        for fmt in recipe.export.formats:
            write_card(out / fmt, FORMATS[fmt].card, plots_from=out, title=recipe.name, base_model=recorded_base.repo_id,
                       base_label=recorded_base.label, edit=edits[fmt], direction_metadata=metadata, report=report,
                       reproduce=f"steerfold run {recipe_path.name}")
            write_checksums(out / fmt)

    if "before" in report:
        report_key = digest("report", state.done.get("validate"), export_keys, recipe.name)
        stage(state, "report", report_key, lambda: (out / "report.json").is_file(), do_report, say)
        report = json.loads((out / "report.json").read_text())

    if recipe.push is not None:
        from editor.hub import push_folder

        for fmt in recipe.export.formats:
            repo = recipe.push.repo if len(recipe.export.formats) == 1 else f"{recipe.push.repo}-{fmt}"
            say(f"[push] {out / fmt} → {repo}: {push_folder(out / fmt, repo, recipe.push.private, recipe.push.revision)}")

    checks = threshold_checks(report, recipe.validate_.thresholds) if recipe.validate_ and "after" in report else []
    for text, met in checks:
        say(f"[thresholds] {'met' if met else 'NOT met'}: {text}")
    failures = [text for text, met in checks if not met]
    if failures:
        raise ThresholdFailure(f"validation thresholds not met: {'; '.join(failures)} (artifacts kept in {out})")
    return report


def plan_recipe(recipe_path: Path, out: Path) -> list[str]:
    """What ``run`` would do, without loading a model or touching the network: stages, downloads, estimates."""
    from editor.hub import looks_like_repo_id
    from editor.pipeline.recipe import load_recipe, read_mapping
    from editor.research.studies.recipe import is_study, load_study_recipe

    data = read_mapping(recipe_path)
    if is_study(data):
        study = load_study_recipe(recipe_path, data)
        return [f"study {study.study.kind} ({study.name}) on {study.model}: would run",
                f"writes {out / 'results.json'} (claims) and {out / 'report.md'}; nothing is downloaded"]
    recipe = load_recipe(recipe_path)
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
    from editor.hub import cached_file

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

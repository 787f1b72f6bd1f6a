"""The stages of a recipe run, one method each: fit → export (one per format) → validate → report → push →
thresholds. Each stage is keyed by a hash of what it reads (``editor.pipeline.state.stage``), so a repeated or
resumed run skips finished work and recomputes exactly what changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from steerfold.errors import SteerfoldError
from steerfold.pipeline.recipe import Recipe, edit_condition_path, edit_spec, fit_sets, placement_of, recipe_base

from steerfold.pipeline.state import RunState, Say, ThresholdFailure, digest, model_identity, records_hash, stage, threshold_checks
from steerfold.prompts import PromptRecord


@dataclass
class RecipeRun:
    """One run of a recipe in a run folder this process holds: what every stage reads, and what they produced."""

    recipe: Recipe
    recipe_path: Path
    out: Path
    folder: Path
    judge: Path | None
    sets: dict[str, list[PromptRecord]]
    say: Say
    state: RunState = field(init=False)
    hashes: dict[str, str] = field(init=False)
    export_keys: dict[str, str] = field(default_factory=dict)
    edits: dict[str, dict] = field(default_factory=dict)  # by format: the edit as its card describes it
    trial: dict | None = None  # the edit options of the tune's picked trial, when the recipe tunes
    loaded: tuple | None = None  # the base model and tokenizer, once a stage needed them

    def __post_init__(self) -> None:
        (self.out / ".cache").mkdir(exist_ok=True)
        self.state = RunState.open(self.out)
        self.hashes = {name: records_hash(records) for name, records in self.sets.items()}
        self.base = recipe_base(self.recipe, self.folder)

    def run(self) -> dict:
        """Every stage in order; returns the report (raises ThresholdFailure when a threshold is not met)."""
        direction = self.tune() if self.recipe.tune is not None else self.fit()
        for fmt in self.recipe.export.formats:
            self.export(fmt, direction)
        report = self.report(direction, self.validate())
        self.push()
        self.check_thresholds(report)
        return report

    def model(self):
        """The base model and its tokenizer, loaded once (seeded, so generation is repeatable)."""
        if self.loaded is None:
            import torch

            from steerfold.models.loading import load_model, load_tokenizer

            torch.manual_seed(0)
            self.loaded = load_model(self.folder, placement=placement_of(self.recipe.model)), load_tokenizer(self.folder)
        return self.loaded

    def fit(self) -> Path:
        """Fit the direction (cached by the model, the fit options, the prompts read and the judge's identity)."""
        from steerfold.directions.fit import FitInputs, report_path, run_fit, write_fitted
        from steerfold.directions.methods.options import FitOptions

        fit, reads = self.recipe.fit, fit_sets(self.recipe.fit)
        # a judge's weights decide the fit too: key on its identity (a Hub judge: its snapshot's)
        judge = model_identity(self.judge) if self.judge and (self.judge / "config.json").is_file() else fit.judge
        placement = placement_of(self.recipe.model).model_dump(mode="json")  # the precision decides the fit too
        key = digest("fit", model_identity(self.folder), fit.model_dump(), [self.hashes[n] for n in reads.values()], judge,
                     placement)
        self.fit_key, path = key, self.out / ".cache" / f"direction-{key}.safetensors"

        def work() -> None:
            model, tokenizer = self.model()
            options = FitOptions.model_validate(fit.model_dump(include=set(FitOptions.model_fields)))
            records = {role: self.sets[name] for role, name in reads.items()}
            fitted = run_fit(FitInputs(model, tokenizer, options, model_name=self.recipe.model.path, **records))
            for warning in fitted.warnings:
                self.say(f"[fit] warning: {warning}")
            write_fitted(path, fitted)

        stage(self.state, "fit", key, path.is_file, work, self.say)
        shutil.copy2(path, self.out / "direction.safetensors")
        if report_path(path).is_file():  # e.g. the per-category cosine report
            shutil.copy2(report_path(path), report_path(self.out / "direction.safetensors"))
        return path

    def tune(self) -> Path:
        """Search the ablation into OUT/tune (``steerfold tune``'s job, cached by the model, the search and the prompts
        read; a changed trial count continues the search); returns the picked trial's direction file."""
        from steerfold.tuning.front import from_trial, trial_direction_path
        from steerfold.tuning.options import TuneOptions
        from steerfold.tuning.space import params_of

        spec, reads, folder = self.recipe.tune, fit_sets(self.recipe.fit), self.out / "tune"
        tests = {"harmful_test": spec.harmful_test, "harmless_test": spec.harmless_test}
        names = [reads.get(role) for role in ("harmful", "harmless", "harmful_val", "harmless_val")] + list(tests.values())
        key = digest("tune", model_identity(self.folder), spec.model_dump(), [self.hashes.get(n) for n in names if n],
                     placement_of(self.recipe.model).model_dump(mode="json"))

        def work() -> None:
            from steerfold.errors import BadInput
            from steerfold.pipeline.state import start_over
            from steerfold.tuning.job import TuneInputs, check_resumable, run_tune
            from steerfold.tuning.report import write_report

            model, tokenizer = self.model()
            options = TuneOptions.model_validate(spec.model_dump(include=set(TuneOptions.model_fields)))
            records = {role: self.sets[name] if name else None for role, name in {**reads, **tests}.items()
                       if role in ("harmful", "harmless", "harmful_val", "harmless_val", *tests)}
            inputs = TuneInputs(model, tokenizer, self.recipe.model.path, options, records["harmful"], records["harmless"],
                                records.get("harmful_val"), records.get("harmless_val"), records["harmful_test"] or (),
                                records["harmless_test"] or (), model_key=model_identity(self.folder))
            folder.mkdir(exist_ok=True)
            try:
                check_resumable(folder, inputs.key(), resume=True)
            except BadInput:  # another model, other prompts or another search: this one starts afresh
                start_over(folder)
            write_report(inputs, run_tune(inputs, folder, resume=True, say=self.say), folder)

        stage(self.state, "tune", key, lambda: (folder / "report.md").is_file(), work, self.say)
        _, trial = from_trial(str(folder))
        self.fit_key, self.trial = digest(key, trial.number), params_of(trial.params).edit_values()
        self.say(f"[tune] picked trial {trial.number}: refusal {trial.objectives[0]:.3f}, damage {trial.objectives[1]:.4f} "
                 "on validation prompts (report in tune/report.md)")
        return trial_direction_path(folder, trial.number)

    def export(self, fmt: str, direction: Path) -> None:
        """Write one export format with ``steerfold edit``'s job; its card's description is kept for the report."""
        from steerfold.artifacts.export import run_edit
        from steerfold.artifacts.outputs import replace_file
        from steerfold.edit.spec import in_recipe_words

        edit, export = self.recipe.edit, self.recipe.export
        condition = edit_condition_path(edit, self.recipe_path.parent)
        condition_hash = hashlib.sha256(condition.read_bytes()).hexdigest() if condition else None
        key = self.export_keys[fmt] = digest("export", self.fit_key, edit.model_dump(), condition_hash, fmt, export.max_shard_size)
        target, described = self.out / fmt, self.out / ".cache" / f"export-{key}.json"
        spec = edit_spec(edit, condition, self.folder, direction, target, fmt, export.max_shard_size, self.base.repo_id,
                         self.trial)

        def work() -> None:
            try:
                summary = run_edit(spec, self.say)
            except SteerfoldError as exc:  # the library names flags; a recipe user typed keys
                raise type(exc)(in_recipe_words(str(exc))) from None
            with replace_file(described) as tmp:  # what the export's card says, for the report stage's cards
                tmp.write_text(json.dumps(summary.described, default=str))

        stage(self.state, f"export:{fmt}", key, lambda: (target / "SHA256SUMS").is_file() and described.is_file(), work, self.say)
        self.edits[fmt] = json.loads(described.read_text())

    def validate(self) -> dict:
        """Validate the merged export (else the adapter) against the base; {} when the recipe does not validate."""
        spec = self.recipe.validate_
        if spec is None:
            return {}
        from steerfold.artifacts.outputs import replace_file
        from steerfold.models.loading import load_model
        from steerfold.validation.options import damage_checks, in_recipe_words as validate_words, load_markers, thinking_switch
        from steerfold.validation.validate import EvalSets, validate

        fmt = "merged" if "merged" in self.recipe.export.formats else "lora"  # the recipe schema requires one of them
        # thresholds only judge the figures: changing one re-checks the cached validation, it does not redo it
        markers = load_markers(spec, self.recipe_path.parent)
        try:
            damage = damage_checks(spec, self.recipe_path.parent)
        except SteerfoldError as exc:  # the library names flags; a recipe user typed keys
            raise type(exc)(validate_words(str(exc))) from None
        judge_id = model_identity(Path(spec.judge)) if spec.judge and (Path(spec.judge) / "config.json").is_file() else spec.judge
        key = digest("validate", self.export_keys[fmt], spec.model_dump(exclude={"thresholds"}), markers, judge_id,
                     self.hashes[spec.harmful], self.hashes[spec.harmless], spec.over_refusal and self.hashes[spec.over_refusal],
                     placement_of(self.recipe.model).model_dump(mode="json"), damage.reference)
        path = self.out / ".cache" / f"validate-{key}.json"

        def work() -> None:
            model, tokenizer = self.model()
            check = None
            if spec.coherence == "organism":
                from steerfold.research.organism import coherent_compliance as check
            edited = load_model(self.out / fmt, base=self.folder, placement=placement_of(self.recipe.model))
            sets = EvalSets(self.sets[spec.harmful], self.sets[spec.harmless], self.sets[spec.over_refusal] if spec.over_refusal else ())
            judge = None
            if spec.judge:
                from steerfold.validation.judging import load_judge

                judge = load_judge(spec.judge, spec.judge_samples, spec.judge_seed, placement_of(self.recipe.model))
            try:
                result = validate(model, edited, tokenizer, sets, spec.system, check, spec.max_new_tokens, markers=markers,
                                  judge=judge, thinking=thinking_switch(spec), damage=damage)
            except SteerfoldError as exc:  # the library names flags; a recipe user typed keys
                raise type(exc)(validate_words(str(exc))) from None
            with replace_file(path) as tmp:
                tmp.write_text(json.dumps(result, default=str))

        stage(self.state, "validate", key, path.is_file, work, self.say)
        return json.loads(path.read_text())

    def report(self, direction: Path, report: dict) -> dict:
        """The report, its plots and every export's card and checksums (written when the recipe validates)."""
        from steerfold.artifacts.card import write_card
        from steerfold.artifacts.checksums import write_checksums
        from steerfold.artifacts.formats import FORMATS
        from steerfold.directions.file import load_direction_file
        from steerfold.validation.report import write_report

        recipe, out = self.recipe, self.out
        metadata = load_direction_file(direction).metadata
        report.update({"recipe": recipe.name, "base": recipe.model.path, "revision": recipe.model.revision,
                       "edit": self.edits[recipe.export.formats[0]]})
        if "selection" in metadata:
            report["selection"] = json.loads(metadata["selection"])
            report["selection_baseline"] = json.loads(metadata.get("selection_baseline", "{}"))
            report["projections"] = json.loads(metadata.get("projections", "{}"))
        if "before" not in report:
            return report

        def work() -> None:
            write_report(out, report)
            for fmt in recipe.export.formats:
                write_card(out / fmt, FORMATS[fmt].card, plots_from=out, title=recipe.name, base_model=self.base.repo_id,
                           base_label=self.base.label, edit=self.edits[fmt], direction_metadata=metadata, report=report,
                           reproduce=f"steerfold run {self.recipe_path.name}")
                write_checksums(out / fmt)

        key = digest("report", self.state.done.get("validate"), self.export_keys, recipe.name)
        stage(self.state, "report", key, lambda: (out / "report.json").is_file(), work, self.say)
        return json.loads((out / "report.json").read_text())

    def push(self) -> None:
        """Upload every export (one repository, or one per format: REPO-FORMAT)."""
        push = self.recipe.push
        if push is None:
            return
        from steerfold.hub import push_folder

        formats = self.recipe.export.formats
        for fmt in formats:
            repo = push.repo if len(formats) == 1 else f"{push.repo}-{fmt}"
            self.say(f"[push] {self.out / fmt} → {repo}: {push_folder(self.out / fmt, repo, push.private, push.revision)}")

    def check_thresholds(self, report: dict) -> None:
        """Say every threshold, met or not; raise ThresholdFailure when one is not met (the artifacts are kept)."""
        spec = self.recipe.validate_
        checks = threshold_checks(report, spec.thresholds) if spec and "after" in report else []
        for text, met in checks:
            self.say(f"[thresholds] {'met' if met else 'NOT met'}: {text}")
        failures = [text for text, met in checks if not met]
        if failures:
            raise ThresholdFailure(f"validation thresholds not met: {'; '.join(failures)} (artifacts kept in {self.out})")

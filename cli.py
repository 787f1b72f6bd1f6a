"""steerfold command line: parse, call the editor library, print. Bad input exits with code 2 and one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from steerfold.click_options import (edit_option_flags, fit_option_flags, placement_flags, placement_from,
                                     tune_option_flags, validate_option_flags)
from steerfold.endings import EXIT_INTERRUPT, EXIT_TERMINATED, SteerfoldGroup, Terminated, UserError, run_command



@click.group(cls=SteerfoldGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="steerfold")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or step lines on stderr (results and errors still print).")
def cli(quiet: bool) -> None:
    """Fit residual-stream directions and fold edits along them into weights, LoRA adapters or control vectors."""
    if quiet:
        os.environ["STEERFOLD_PROGRESS"] = "off"


@cli.command()
@click.argument("model_dir")
@edit_option_flags
def edit(model_dir: str, **options) -> None:
    """Fold an edit along a direction into MODEL_DIR's weights (or a LoRA adapter, or a control vector).

    The edit is the ablation of the direction, or with --steer a constant offset along it, with --condition a
    conditional map, or with --subspace the removal of the file's basis. Before any output appears, it prints which
    artifacts can carry the edit exactly, and refuses a --format that cannot. MODEL_DIR is a local checkpoint folder,
    a .gguf file or a Hub id (fetched through huggingface_hub's cache).
    """
    from steerfold.artifacts.export import run_edit
    from steerfold.edit.spec import spec_from_cli

    spec = spec_from_cli({"model": model_dir, **options})
    summary = run_edit(spec, say=click.echo)
    layers_text = _ranges(summary.layers)
    click.echo(f"wrote {summary.format} {summary.out} ({summary.layout.model_type}, layer indices {layers_text}, {spec.describe()})")
    if summary.details.get("untied_output_head"):
        click.echo("note: the tied output head was given its own unedited copy of the embedding (tie_word_embeddings=false)")


@cli.command()
@click.argument("model_dir")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickled pytorch_model.bin weights.")
@click.option("--revision", default=None, help="Revision when MODEL_DIR is a Hub id.")
def inspect(model_dir: str, as_json: bool, allow_pickle: bool, revision: str | None) -> None:
    """Show MODEL_DIR's residual writers and which artifacts can carry which edit exactly."""
    from steerfold.models.inspect import inspect_model, inspect_lines

    info = inspect_model(model_dir, revision, allow_pickle)
    for line in [json.dumps(info, indent=2)] if as_json else inspect_lines(info):
        click.echo(line)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: model_type to [status, note].")
@click.option("--all", "every", is_flag=True, help="Also name each causal-LM type that has no row yet.")
def architectures(as_json: bool, every: bool) -> None:
    """List the model types steerfold edits, with their residual writers, and those it refuses and why."""
    from steerfold.models.coverage import coverage, coverage_lines

    for line in [json.dumps(coverage(), indent=2)] if as_json else coverage_lines(every):
        click.echo(line)


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
def verify(folder: Path) -> None:
    """Re-check FOLDER's SHA256SUMS and shard index; exit 1 on any mismatch."""
    from steerfold.artifacts.checksums import SUMS, verify as verify_folder

    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: pass a folder written by steerfold")
    problems = verify_folder(folder)
    for problem in problems:
        click.echo(f"FAILED: {problem}", err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"OK: every file matches {SUMS} and the shard index is consistent")


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--revision", default=None, help="Branch to commit to (created if missing).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--commit-message", default=None, help="Commit message (default: 'Upload FOLDER with steerfold').")
@click.option("--dry-run", is_flag=True, help="Print what would be uploaded, without any network access.")
def push(folder: Path, repo_id: str, private: bool, revision: str | None, create_pr: bool, commit_message: str | None,
         dry_run: bool) -> None:
    """Upload FOLDER to the Hub repository REPO_ID in one commit (token: HF_TOKEN or the stored login)."""
    from steerfold.hub import REPO_ID, plan_push, push_folder

    if dry_run:
        if not REPO_ID.match(repo_id):
            raise UserError(f"'{repo_id}' is not a repository id: write it as owner/name")
        files = plan_push(folder)
        target = f"{repo_id} ({'private' if private else 'public'}), revision {revision or 'main'}" + (", as a pull request" if create_pr else "")
        click.echo(f"would upload {len(files)} files, {sum(f.size for f in files):,} bytes, to {target}:")
        for f in files:
            click.echo(f"  {f.size:>14,}  {f.path_in_repo}")
        return
    url = push_folder(folder, repo_id, private, revision, create_pr, commit_message)
    click.echo(f"pushed {folder} to {url}")


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
def clean(out: Path) -> None:
    """Remove what an interrupted or killed run left at OUT: hidden temporaries beside it (.OUT.tmp-*, .OUT.old-*,
    its lock) and, in a steerfold run folder, inside it. Nothing else is touched."""
    from steerfold.artifacts.outputs import clean as clean_output

    removed = clean_output(out)
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"{len(removed)} leftover(s) removed at {out}")


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default: runs/ and the recipe file's name without .yaml).")
@click.option("--resume", is_flag=True, help="Continue a run in --out, skipping finished stages.")
@click.option("--overwrite", is_flag=True, help="Start over in an existing --out.")
@click.option("--dry-run", is_flag=True, help="Print the plan (stages, downloads, estimates) without running a model.")
@click.option("--model", "model_path", default=None, metavar="PATH", help="Run on this model instead of the recipe's (a local folder, a .gguf file or a Hub id); a Hub id the recipe names stays the base its artifacts record.")
@click.option("--prompts", "prompt_files", multiple=True, metavar="NAME=FILE", help="Read the recipe's prompt set NAME from FILE instead (repeatable).")
@placement_flags
def run(recipe: Path, out: Path | None, resume: bool, overwrite: bool, dry_run: bool, model_path: str | None,
        prompt_files: tuple[str, ...], **options) -> None:
    """Run every stage of a RECIPE (YAML): fit, export, validate, report, push."""
    from steerfold.interrupts import load_torch
    from steerfold.pipeline.plan import plan_recipe
    from steerfold.pipeline.run import run_recipe
    from steerfold.pipeline.state import ThresholdFailure

    out = out or Path("runs") / recipe.stem
    prompts = dict(_name_and_file(text) for text in prompt_files)
    placement = {name.removeprefix("place_"): value for name, value in options.items() if value is not None}
    overrides = {"model": model_path, "prompts": prompts, "placement": placement}
    if dry_run:
        for line in plan_recipe(recipe, out, **overrides):
            click.echo(line)
        return
    load_torch()
    try:
        report = run_recipe(recipe, out, resume=resume, overwrite=overwrite, say=click.echo, **overrides)
    except ThresholdFailure as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1)
    except KeyboardInterrupt as exc:
        click.echo(f"interrupted: finished stages are kept; run again with --resume --out {out}", err=True)
        raise SystemExit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPT)
    if "after" in report:
        from steerfold.validation.report import console_lines, unmoved_warning

        for line in console_lines(report):
            click.echo(line)
        if warning := unmoved_warning(report):
            click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out}")


def _name_and_file(text: str) -> tuple[str, str]:
    name, sep, file = text.partition("=")
    if not sep or not name or not file:
        raise UserError(f"--prompts '{text}' is not NAME=FILE: write e.g. --prompts harmful=my_prompts.jsonl")
    return name, file


def _records(path: Path | None):
    from steerfold.prompts import load_prompts

    return load_prompts(path) if path is not None else None


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Direction file to write (.safetensors); a method's report goes beside it (.md).")
@click.option("--harmful", type=click.Path(path_type=Path), help="Prompts that should be refused (jsonl, csv or txt; per_category reads their 'category').")
@click.option("--harmless", type=click.Path(path_type=Path), help="Prompts that should be answered.")
@click.option("--harmful-val", type=click.Path(path_type=Path), help="Validation harmful prompts (default: every 4th of --harmful).")
@click.option("--harmless-val", type=click.Path(path_type=Path), help="Validation harmless prompts (default: every 4th of --harmless).")
@click.option("--prompts", type=click.Path(path_type=Path), help="persona_vector: prompts whose responses are averaged.")
@fit_option_flags
@click.option("--revision", default=None, help="Revision (branch, tag or commit) when MODEL_DIR is a Hub id.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@placement_flags
def fit(model_dir: Path, out: Path, harmful: Path | None, harmless: Path | None, harmful_val: Path | None,
        harmless_val: Path | None, prompts: Path | None, revision: str | None, overwrite: bool, **options: str | None) -> None:
    """Fit a direction in MODEL_DIR (a checkpoint folder or a Hub id) with --method (default diff_in_means;
    --persona alone implies persona_vector).

    Contrast methods (diff_in_means, pca, logistic, ridge, inlp) fit at every post-instruction position (or, with
    --position after-thinking, every token closing an empty reasoning block the prompts end with) and layer
    index, then choose one candidate as Arditi et al. do (bypass, induce, KL on validation prompts); the file
    records the chosen layer and the table. per_category writes one direction per harm category, every layer, and
    a cosine report beside the file. Layer index: 0 = embedding output, l = output of decoder block l-1.
    """
    from steerfold.interrupts import load_torch

    load_torch()
    from steerfold.directions.file import is_direction_file
    from steerfold.errors import SteerfoldError
    from steerfold.directions.methods.options import parse_fit_options
    from steerfold.artifacts.outputs import check_apart, open_output

    placement = placement_from(options)
    given = {name: value for name, value in options.items() if value is not None}
    if "persona" in given:
        given.setdefault("method", "persona_vector")
    fit_options = parse_fit_options(given)

    from steerfold.directions.file import save_direction_file
    from steerfold.directions.fit import FitInputs, check_prompt_sets, is_fit_report, report_path, run_fit, write_fit_report
    from steerfold.hub import resolve_model
    from steerfold.models.loading import load_model, load_tokenizer

    check_prompt_sets(fit_options, harmful is not None, harmless is not None, prompts is not None)
    folder = resolve_model(model_dir, revision)
    inputs = [folder, harmful, harmless, harmful_val, harmless_val, prompts]
    report = report_path(out)
    check_apart(out, inputs)
    check_apart(report, inputs)
    if report.exists() and not (overwrite and is_fit_report(report)):
        raise SteerfoldError(f"{report} (where this fit's report goes) already exists"
                             + (" and was not written by steerfold fit: remove it yourself or choose another --out" if overwrite
                                else ": choose another --out, or pass --overwrite to replace a report steerfold fit wrote"))
    with open_output(out, "file", inputs, overwrite, recognise=is_direction_file) as tmp:
        sets = {name: _records(path) for name, path in (("harmful", harmful), ("harmless", harmless), ("harmful_val", harmful_val),
                                                         ("harmless_val", harmless_val), ("prompts", prompts))}
        model, tokenizer = load_model(folder, placement=placement), load_tokenizer(folder)
        fitted = run_fit(FitInputs(
            model, tokenizer, fit_options, sets["harmful"] or (), sets["harmless"] or (), sets["harmful_val"],
            sets["harmless_val"], sets["prompts"] or (), model_name=str(model_dir) + (f"@{revision}" if revision else ""),
        ))
        save_direction_file(tmp, fitted.file)
    written = [out] + write_fit_report(fitted, report)  # once the direction file is in place
    for warning in fitted.warnings:
        click.echo(f"warning: {warning}", err=True)
    for line in fitted.lines:
        click.echo(line)
    click.echo(f"wrote {' and '.join(map(str, written))}")


@cli.command()
@click.argument("edited", type=click.Path(path_type=Path))
@click.option("--base", required=True, type=click.Path(path_type=Path), help="The unedited checkpoint: a folder or a Hub id.")
@click.option("--revision", default=None, help="Revision (branch, tag or commit) when --base is a Hub id.")
@click.option("--harmful", required=True, type=click.Path(path_type=Path), help="Held-out prompts that the base refuses.")
@click.option("--harmless", required=True, type=click.Path(path_type=Path), help="Held-out prompts that the base answers.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for report.json, report.md and responses.jsonl.")
@validate_option_flags
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@placement_flags
def validate(edited: Path, base: Path, revision: str | None, harmful: Path, harmless: Path, out: Path, overwrite: bool,
             **options) -> None:
    """Measure EDITED (a checkpoint or an adapter folder) against --base; write report.json, report.md and every
    response with its verdicts (responses.jsonl)."""
    from steerfold.validation.options import (ValidateOptions, damage_checks, load_markers, parse_validate_options,
                                              thinking_switch)

    given = parse_validate_options({name: options.pop(name) for name in ValidateOptions.model_fields})
    markers, damage = load_markers(given), damage_checks(given)  # bad files are refused before torch loads
    if given.over_refusal and not Path(given.over_refusal).is_file():
        raise UserError(f"--over-refusal {given.over_refusal} does not exist: pass a jsonl, csv or txt prompt file "
                        "(e.g. recipes/prompts/over_refusal.jsonl)")
    placement = placement_from(options)
    from steerfold.interrupts import load_torch

    load_torch()
    from steerfold.validation.report import console_lines, unmoved_warning, write_report
    from steerfold.validation.validate import EvalSets, validate as run_validation
    from steerfold.hub import resolve_model
    from steerfold.models.loading import check_compatible, load_model, load_tokenizer
    from steerfold.artifacts.outputs import open_output

    base_folder = resolve_model(base, revision)
    over_refusal = Path(given.over_refusal) if given.over_refusal else None
    text = Path(given.perplexity_text) if given.perplexity_text not in (None, "none") else None
    inputs = [edited, base_folder, harmful, harmless, given.markers, over_refusal, text]
    with open_output(out, "folder", [i for i in inputs if i is not None], overwrite) as tmp:
        sets = EvalSets(_records(harmful), _records(harmless), _records(over_refusal) or ())
        check = None
        if given.coherence == "organism":
            from steerfold.research.organism import coherent_compliance as check
        check_compatible(edited, base_folder)
        base_model = load_model(base_folder, placement=placement)
        edited_model = load_model(edited, base=base_folder, placement=placement)
        judge = None
        if given.judge:
            from steerfold.validation.judging import load_judge

            judge = load_judge(given.judge, given.judge_samples, given.judge_seed, placement)
        report = run_validation(base_model, edited_model, load_tokenizer(base_folder), sets, given.system, check,
                                given.max_new_tokens, markers=markers, judge=judge, thinking=thinking_switch(given),
                                damage=damage)
        report.update({"base": str(base), "base_revision": revision, "edited": str(edited),
                       "placement": base_model.steerfold_placement})
        write_report(tmp, report)
    for line in console_lines(report):
        click.echo(line)
    if warning := unmoved_warning(report):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out}/report.json, report.md and responses.jsonl")


@cli.command()
@click.argument("model_dir")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Tune folder: trials, journal, report.md, front.png, each trial's direction.")
@click.option("--harmful", required=True, type=click.Path(path_type=Path), help="Prompts the directions are fitted on, that should be refused.")
@click.option("--harmless", required=True, type=click.Path(path_type=Path), help="Prompts the directions are fitted on, that should be answered.")
@click.option("--harmful-val", type=click.Path(path_type=Path), help="Harmful prompts the trials are measured on (default: every 4th of --harmful).")
@click.option("--harmless-val", type=click.Path(path_type=Path), help="Harmless prompts the trials are measured on (default: every 4th of --harmless).")
@click.option("--harmful-test", type=click.Path(path_type=Path), help="Held-out harmful prompts the front and the pick are measured on.")
@click.option("--harmless-test", type=click.Path(path_type=Path), help="Held-out harmless prompts the front and the pick are measured on.")
@tune_option_flags
@click.option("--resume", is_flag=True, help="Continue the tune in --out (with a higher --trials: add trials).")
@click.option("--overwrite", is_flag=True, help="Start over in an existing --out.")
@click.option("--revision", default=None, help="Revision (branch, tag or commit) when MODEL_DIR is a Hub id.")
@placement_flags
def tune(model_dir: str, out: Path, resume: bool, overwrite: bool, revision: str | None, **options) -> None:
    """Search the ablation that removes the most refusal for the least damage (multi-objective TPE, optuna): the
    direction's layer and fitting, per-role kernels, scale, norm preservation. Trials are measured on validation
    prompts; the Pareto front and the pick also on test prompts. Export a trial with edit --from-trial DIR#N."""
    from steerfold.tuning.command import SET_NAMES, run_tune_command, summary_lines
    from steerfold.tuning.options import TuneOptions, parse_tune_options

    paths = {name: options.pop(name) for name in SET_NAMES}
    given = parse_tune_options({name: options.pop(name) for name in TuneOptions.model_fields})
    result = run_tune_command(model_dir, out, paths, given, placement_from(options), resume, overwrite, revision, click.echo)
    for line in summary_lines(result, given, model_dir, out):
        click.echo(line)


@cli.command()
@click.option("--out", default="steerfold-demo", show_default=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def demo(out: Path, overwrite: bool) -> None:
    """Fit, fold, validate and export the refusal edit on the built-in model organism, offline."""
    import time

    from steerfold.interrupts import load_torch

    load_torch()
    from steerfold.pipeline.demo import print_summary, run_demo

    start = time.perf_counter()
    report = run_demo(out, overwrite, say=click.echo)
    print_summary(report, say=click.echo)
    click.echo(f"wrote {out}/model, {out}/adapter, {out}/direction.safetensors, {out}/report.md in {time.perf_counter() - start:.0f} s")


@cli.group()
def organism() -> None:
    """The built-in model organism: a small chat model that refuses, for offline tests and demos."""


@organism.command("build")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the rebuilt checkpoint.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Seed of the corpus and the training (0 gives the shipped weights).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def organism_build(out: Path, seed: int, overwrite: bool) -> None:
    """Rebuild the organism from its seeded grammar (corpus, tokenizer, training) on CPU."""
    from steerfold.interrupts import load_torch

    load_torch()
    from steerfold.research.organism import build_organism

    path = build_organism(out, seed=seed, overwrite=overwrite, say=lambda line: click.echo(line, err=True))
    click.echo(f"wrote {path}")


def _ranges(layers: list[int]) -> str:
    """Compact ``0-4,7`` text for a sorted list of layer indices."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(f"{start}" if start == layer else f"{start}-{layer}")
            start = None
    return ",".join(parts)


def main() -> None:
    """The console entry point (every ending is one line and an exit code: ``editor.endings``)."""
    run_command(cli)

if __name__ == "__main__":
    main()

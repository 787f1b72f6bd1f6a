"""``steerfold tune`` from the command line's values: check everything a user can get wrong before the model loads,
then run the tune into its folder (a work folder: written as it goes, so an interrupted tune resumes)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from steerfold.errors import BadInput
from steerfold.tuning.options import TuneOptions, unavailable_optuna

Say = Callable[[str], None]
SET_NAMES = ("harmful", "harmless", "harmful_val", "harmless_val", "harmful_test", "harmless_test")


def is_tune_folder(folder: Path) -> bool:
    """A folder ``steerfold tune`` made (what --resume continues and --overwrite may empty)."""
    from steerfold.artifacts.outputs import is_steerfold_folder
    from steerfold.tuning.front import TUNE_FILE

    return (folder / TUNE_FILE).is_file() and is_steerfold_folder(folder)


def check_sets(paths: dict[str, Path | None]) -> None:
    """Test sets come in pairs (a missing validation set is every 4th training prompt), and every file named exists."""
    if (paths.get("harmful_test") is None) != (paths.get("harmless_test") is None):
        raise BadInput("the test prompts are measured in pairs: pass both --harmful-test and --harmless-test, or neither")
    for name, path in paths.items():
        if path is not None and not Path(path).is_file():
            raise BadInput(f"--{name.replace('_', '-')} {path} does not exist: pass a jsonl, csv or txt prompt file")


def run_tune_command(model_dir: str, out: Path, paths: dict[str, Path | None], options: TuneOptions, placement,
                     resume: bool, overwrite: bool, revision: str | None, say: Say):
    """Load, tune, report; returns the result. The folder's rules are a run folder's (``--resume``/``--overwrite``)."""
    if missing := unavailable_optuna():
        raise missing
    if resume and overwrite:
        raise BadInput("--resume continues a tune and --overwrite starts it over: pass one of them")
    check_sets(paths)
    if out.is_dir() and [p for p in out.iterdir() if not p.name.startswith(".steerfold")] and not (resume or overwrite):
        raise BadInput(f"{out} already holds files: pass --resume to continue its tune, or --overwrite to start over")
    if resume and out.is_dir() and not is_tune_folder(out):
        raise BadInput(f"{out} holds no tune to resume: run without --resume, or choose the folder of a tune")
    from steerfold.interrupts import load_torch

    load_torch()
    from steerfold.artifacts.outputs import open_output
    from steerfold.hub import resolve_model
    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.pipeline.state import model_identity, start_over
    from steerfold.prompts import load_prompts
    from steerfold.tuning.job import TuneInputs, run_tune
    from steerfold.tuning.report import write_report

    folder = resolve_model(model_dir, revision)
    inputs = [folder, *paths.values()]
    with open_output(out, "workdir", [p for p in inputs if p is not None], overwrite or resume, recognise=is_tune_folder):
        if overwrite:
            start_over(out)
        sets = {name: load_prompts(path) if path is not None else None for name, path in paths.items()}
        model, tokenizer = load_model(folder, placement=placement), load_tokenizer(folder)
        tune_inputs = TuneInputs(model, tokenizer, str(model_dir), options, sets["harmful"], sets["harmless"],
                                 sets["harmful_val"], sets["harmless_val"], sets["harmful_test"] or (),
                                 sets["harmless_test"] or (), model_key=model_identity(folder))
        result = run_tune(tune_inputs, out, resume, say)
        write_report(tune_inputs, result, out)
    return result


def summary_lines(result, options: TuneOptions, model_dir: str, out: Path) -> list[str]:
    """What ``steerfold tune`` prints when done: the search, the pick as read in full, how to export it."""
    read, picked = result.validation[result.picked.number], result.picked
    return [f"{len(result.trials)} trials, {len(result.front)} on the Pareto front; picked trial {picked.number} "
            f"({result.reason}): on validation prompts refusal {read['refusal']:.1%} by markers, probability "
            f"{read['refusal_probability']:.3f}; damage {picked.objectives[1]:.4f} ({options.damage})",
            f"wrote {out}/report.md; export with: steerfold edit {model_dir} --from-trial {out}#{picked.number} --out OUT"]

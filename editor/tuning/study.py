"""The search itself: multi-objective TPE (optuna) over the tune's space, kept in a journal file in the tune folder.

A tune resumes to the same trials it would have run uninterrupted. Each trial's sampler is seeded from the tune's
seed and the number of trials finished before it, and TPE reads only finished trials, so what a trial samples
depends on nothing an interruption changes; a trial left running by a killed process is marked failed and its turn
comes again. Trials are numbered by finishing order (0, 1, …), the same with or without interruptions.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

from steerfold.artifacts.outputs import replace_file
from steerfold.progress import progress
from steerfold.tuning.front import TRIALS_FILE, Trial
from steerfold.tuning.measure import Measured
from steerfold.tuning.options import TuneOptions
from steerfold.tuning.space import Space, TrialParams, suggest

JOURNAL_FILE = "journal.log"
STUDY_NAME = "steerfold-tune"
Evaluate = Callable[[int, TrialParams], Measured]


def open_study(folder: Path):
    """The tune's optuna study in ``folder``'s journal (created on first use); stale running trials marked failed."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL_FILE)))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, directions=["minimize", "minimize"],
                                load_if_exists=True)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study.tell(trial.number, state=TrialState.FAIL)
    return study


def finished(study) -> list[Trial]:
    """The study's finished trials as ``Trial`` rows, by their number."""
    from optuna.trial import TrialState

    rows = [Trial(t.user_attrs["number"], t.user_attrs["params"], tuple(t.values), t.user_attrs["validation"],
                  t.user_attrs["seconds"]) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return sorted(rows, key=lambda t: t.number)


def sampler_for(options: TuneOptions, number: int):
    """TPE seeded by the tune's seed and the trial's number: the same trial samples the same point on every run."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=(options.seed * 1_000_003 + number) % 2**32, multivariate=True,
                                          n_startup_trials=options.startup_trials, constant_liar=False)


def search(folder: Path, space: Space, options: TuneOptions, evaluate: Evaluate) -> list[Trial]:
    """Run trials until ``options.trials`` have finished (none when they already have); ``trials.jsonl`` is
    rewritten after each. Returns every finished trial."""
    study = open_study(folder)
    done = len(finished(study))

    def objective(trial) -> tuple[float, float]:
        params = suggest(trial, space)
        number = done
        trial.set_user_attr("number", number)
        trial.set_user_attr("params", params.as_dict())
        start = time.perf_counter()
        measured = evaluate(number, params)
        trial.set_user_attr("validation", measured.as_dict())
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        return measured.objectives(options.refusal, options.damage)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's experimental-feature notes, not the user's business
        for _ in progress(range(max(0, options.trials - done)), "running trials", unit="trial"):
            study.sampler = sampler_for(options, done)
            study.optimize(objective, n_trials=1)
            done += 1
            write_trials(folder, finished(study))
    return finished(study)


def write_trials(folder: Path, trials: list[Trial]) -> None:
    """``trials.jsonl``: one finished trial a line, replaced whole."""
    import json

    with replace_file(folder / TRIALS_FILE) as tmp:
        tmp.write_text("".join(json.dumps(t.as_dict(), sort_keys=True) + "\n" for t in trials))

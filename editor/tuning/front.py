"""A tune's finished trials as data: reading ``trials.jsonl``, the Pareto front of refusal against damage, the trial
``--pick`` chooses, and ``steerfold edit --from-trial DIR#N`` turned into the edit's options. No torch here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerfold.errors import BadInput

TRIALS_FILE = "trials.jsonl"
TUNE_FILE = "tune.json"


@dataclass(frozen=True)
class Trial:
    """A finished trial: its number, its point of the search space, the (refusal, damage) the search minimised and
    everything it measured on the validation prompts."""

    number: int
    params: dict[str, Any]
    objectives: tuple[float, float]
    validation: dict[str, Any]  # Measured.as_dict()
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "params": self.params, "objectives": list(self.objectives),
                "validation": self.validation, "seconds": self.seconds}


def trial_direction_path(folder: Path, number: int) -> Path:
    """Where a tune writes trial ``number``'s direction file."""
    return folder / "directions" / f"trial-{number}.safetensors"


def read_trials(folder: Path) -> list[Trial]:
    """The finished trials a tune folder lists, in order."""
    path = folder / TRIALS_FILE
    if not path.is_file():
        raise BadInput(f"{folder} holds no {TRIALS_FILE}: pass a folder written by steerfold tune")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Trial(**{**row, "objectives": tuple(row["objectives"])}) for row in rows]


def pareto_front(trials: list[Trial]) -> list[Trial]:
    """Trials no other trial beats on both refusal and damage (at least as good on both, better on one), by refusal."""
    points = [(t, t.objectives) for t in trials]
    front = [t for t, (r, d) in points
             if not any(r2 <= r and d2 <= d and (r2 < r or d2 < d) for _, (r2, d2) in points)]
    return sorted(front, key=lambda t: (t.objectives, t.number))


def pick(trials: list[Trial], choice: str, max_refusal: float) -> tuple[Trial, str]:
    """The chosen trial and why: ``auto`` takes the lowest damage among trials whose validation refusal is at most
    ``max_refusal`` (none: the lowest refusal, then damage); a number takes that trial."""
    if not trials:
        raise BadInput("the tune has no finished trial to pick: run it with --trials 1 or more")
    if choice != "auto":
        found = [t for t in trials if t.number == int(choice)]
        if not found:
            raise BadInput(f"there is no finished trial {choice}: pick one of {', '.join(str(t.number) for t in trials)}")
        return found[0], f"trial {choice}, as asked"
    within = [t for t in trials if t.objectives[0] <= max_refusal + 1e-12]
    if within:
        best = min(within, key=lambda t: (t.objectives[1], t.number))
        return best, f"lowest damage among the {len(within)} trials with validation refusal ≤ {max_refusal:g}"
    best = min(trials, key=lambda t: (t.objectives, t.number))
    return best, f"no trial reached validation refusal ≤ {max_refusal:g}: the lowest refusal, then the lowest damage"


def from_trial(text: str) -> tuple[Path, Trial]:
    """``DIR#N`` (trial N of the tune in DIR) or ``DIR`` (the trial that tune picked) → the folder and the trial."""
    folder_text, _, number = text.rpartition("#") if "#" in text else (text, "", "")
    folder = Path(folder_text)
    if number and not number.isdigit():
        raise BadInput(f"--from-trial '{text}' is not DIR#N: write e.g. --from-trial tune-out#17")
    trials = read_trials(folder)
    if not number:
        tune = json.loads((folder / TUNE_FILE).read_text()) if (folder / TUNE_FILE).is_file() else {}
        if tune.get("picked") is None:
            raise BadInput(f"{folder} records no picked trial: name one, e.g. --from-trial {folder}#0")
        number = str(tune["picked"])
    found = [t for t in trials if t.number == int(number)]
    if not found:
        raise BadInput(f"{folder} has no finished trial {number}: pick one of {', '.join(str(t.number) for t in trials)}")
    return folder, found[0]

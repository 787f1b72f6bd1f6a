"""A run folder's state: which stages finished, under which key, and how long they took; the stage runner that
skips a stage whose key is unchanged; the recipe's thresholds checked against a report."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from steerfold.artifacts.outputs import RUN_STATE
from steerfold.errors import BadInput, SteerfoldError
from steerfold.prompts import PromptRecord

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
        from steerfold.artifacts.outputs import replace_file

        with replace_file(self.path) as tmp:
            tmp.write_text(json.dumps({"done": self.done, "timings": self.timings}, indent=2))


def is_run_folder(out: Path) -> bool:
    """A folder ``steerfold run`` made (what --resume continues and --overwrite may empty)."""
    from steerfold.artifacts.outputs import is_steerfold_folder

    return (out / RUN_STATE).is_file() or is_steerfold_folder(out)


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run folder needs --resume (continue) or --overwrite (start over)."""
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise BadInput(f"{out} already holds a run: pass --resume to continue it, or --overwrite to start over")
    if resume and overwrite:
        raise BadInput("--resume continues a run and --overwrite starts it over: pass one of them")


def start_over(out: Path) -> None:
    """Empty a run folder for --overwrite (its marker stays: the folder is still steerfold's)."""
    from steerfold.artifacts.outputs import LOCK, MARKER, remove

    for item in out.iterdir():
        if item.name not in (MARKER, LOCK):  # the lock is this process's
            remove(item)


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
              ("over_refusal", thresholds.over_refusal_max, max),
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

"""Studies: research findings behind steerfold's methods, measured on a model and stated as claims.

A study measures, then states each finding as ``{claim, holds, figures}``; ``write_study`` puts the claims in
``results.json`` and a table in ``report.md``. Shipped study recipes live in ``recipes/studies/`` and run with
``steerfold run``; ``editor.research.studies.recipe.SPECS`` maps a recipe's ``study.kind`` to its study module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from steerfold.artifacts.outputs import replace_file


@dataclass(frozen=True)
class Claim:
    """One finding: what is claimed, whether the measurement bears it out, and the numbers it rests on."""

    claim: str
    holds: bool
    figures: dict[str, float]


@dataclass
class StudyResult:
    """Everything a study measured: its claims, a table of the measurements and free-form details."""

    title: str
    claims: list[Claim]
    table: list[dict[str, object]]
    details: dict[str, object] = field(default_factory=dict)
    more_tables: dict[str, list[dict[str, object]]] = field(default_factory=dict)  # heading → rows, in report.md
    plots: dict[str, Callable[[Path], None]] = field(default_factory=dict)  # file name → what draws it, in report.md

    def as_dict(self) -> dict:
        return {"title": self.title, "claims": [asdict(c) for c in self.claims], "table": self.table,
                **self.more_tables, **self.details}


def markdown_table(rows: list[dict[str, object]]) -> str:
    """A markdown table of rows with the same keys; floats with three decimals."""
    if not rows:
        return ""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def render_report(result: StudyResult) -> str:
    """The study's report.md: the claims with their verdicts, then the measurements."""
    lines = [f"# {result.title}", "", "## Claims", ""]
    for claim in result.claims:
        figures = ", ".join(f"{k} = {v:.3f}" if isinstance(v, float) else f"{k} = {v}" for k, v in claim.figures.items())
        lines.append(f"- **{'holds' if claim.holds else 'does not hold'}**: {claim.claim} ({figures})")
    lines += ["", "## Measurements", "", markdown_table(result.table), ""]
    for heading, rows in result.more_tables.items():
        lines += [f"## {heading}", "", markdown_table(rows), ""]
    lines += [f"![{name}]({name})\n" for name in result.plots]
    return "\n".join(lines)


def write_study(out: Path, result: StudyResult) -> None:
    """Write ``out/results.json`` and ``out/report.md`` (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    with replace_file(out / "results.json") as tmp:
        tmp.write_text(json.dumps(result.as_dict(), indent=2, default=float) + "\n")
    with replace_file(out / "report.md") as tmp:
        tmp.write_text(render_report(result))
    for name, draw in result.plots.items():
        with replace_file(out / name) as tmp:
            draw(tmp)


def run_study(model, tokenizer, spec, inputs) -> StudyResult:
    """Run the study a spec (one of ``editor.research.studies.recipe.SPECS``) describes on ``inputs`` (a
    ``StudyInputs``): its module's ``run``."""
    import importlib

    return importlib.import_module(type(spec).__module__).run(model, tokenizer, spec, inputs)

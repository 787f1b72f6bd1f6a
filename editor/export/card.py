"""Model cards rendered from ``model_cards/*.md.j2`` with Jinja2, offline, from the edit and its report."""

from __future__ import annotations

from pathlib import Path

import jinja2

from editor.evaluate.report import before_after_rows, markdown_table

TEMPLATES = Path(__file__).resolve().parents[2] / "model_cards"


def render_card(kind: str, context: dict) -> str:
    """Render the card template ``kind`` (``merged`` or ``adapter``) with the edit, base and report."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    )
    report = context.get("report")
    table = markdown_table(("metric", "before", "after"), before_after_rows(report)) if report else ""
    return env.get_template(f"{kind}.md.j2").render(**context, validation_table=table)


def write_card(folder: Path, kind: str, context: dict) -> None:
    (folder / "README.md").write_text(render_card(kind, context))

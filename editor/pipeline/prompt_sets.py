"""A recipe's prompt set read into records: a local file, a split of the organism's prompts, or a Hub dataset."""

from __future__ import annotations

from pathlib import Path

from steerfold.errors import BadInput
from steerfold.pipeline.recipe import PromptSet
from steerfold.prompts import PromptRecord, load_prompts


def load_prompt_set(spec: PromptSet, base: Path) -> list[PromptRecord]:
    """Prompts of one set: a local file, a split of the organism's prompts, or a Hub dataset."""
    if spec.organism:
        from steerfold.research.organism import load_split

        kind, _, split = spec.organism.partition("/")
        try:
            records = load_split(kind, split)
        except ValueError as exc:
            raise BadInput(f"organism prompts '{spec.organism}': {exc}: write e.g. harmful/test") from None
    elif spec.file:
        path = base / spec.file if (base / spec.file).is_file() else Path(spec.file)
        records = load_prompts(path)
    else:
        records = _hub_dataset(spec)
    return records[: spec.count] if spec.count else records


def _hub_dataset(spec: PromptSet) -> list[PromptRecord]:
    from steerfold.hub import load_dataset_split

    rows = load_dataset_split(spec.dataset, spec.split)
    if spec.column not in rows.column_names:
        raise BadInput(f"dataset {spec.dataset} has no column '{spec.column}' (columns: {', '.join(rows.column_names)})")
    categories = rows[spec.category_column] if spec.category_column else [None] * len(rows)
    return [PromptRecord(str(t), c) for t, c in zip(rows[spec.column], categories)]

"""A study's inputs: harmful and harmless prompts in train / val / test splits, and how refusal is read.

A recipe gives each kind of prompt as three sets, or as one pool (several sets, concatenated) split by category
in fixed fractions: within each category the prompts are ordered by a hash of their text, so the split is the
same on every machine and does not follow the order of the file. Without a ``prompts`` section a study reads
the organism's shipped splits (whose test split holds out objects and request frames).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steerfold.errors import BadInput
from steerfold.pipeline.recipe import PromptSet
from steerfold.prompts import PromptRecord

KINDS = ("harmful", "harmless")
SPLITS = ("train", "val", "test")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KindPrompts(Strict):
    """One kind of prompt: ``train``, ``val`` and ``test`` sets, or a ``pool`` split by category in ``fractions``;
    ``categories`` keeps only the prompts of those categories."""

    train: PromptSet | None = None
    val: PromptSet | None = None
    test: PromptSet | None = None
    pool: list[PromptSet] | None = Field(default=None, min_length=1)
    fractions: tuple[float, float, float] = (0.5, 0.2, 0.3)
    categories: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def one_way(self) -> "KindPrompts":
        sets = [s for s in (self.train, self.val, self.test) if s is not None]
        if self.pool is None and len(sets) != 3:
            raise ValueError("give train, val and test sets, or a pool to split by category")
        if self.pool is not None and sets:
            raise ValueError("give either train, val and test sets or a pool, not both")
        return self

    @field_validator("fractions")
    @classmethod
    def parts(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0 or abs(sum(value) - 1) > 1e-6:
            raise ValueError(f"fractions are [train, val, test], each above 0, summing to 1, got {list(value)}")
        return value


class StudyPrompts(Strict):
    harmful: KindPrompts
    harmless: KindPrompts


def hashed_order(records: Sequence[PromptRecord]) -> list[PromptRecord]:
    """The records ordered by the SHA-256 of their text: a fixed shuffle, independent of the file's order."""
    return sorted(records, key=lambda r: hashlib.sha256(r.text.encode()).hexdigest())


def split_by_category(records: Sequence[PromptRecord], fractions: tuple[float, float, float]) -> dict[str, list[PromptRecord]]:
    """Train / val / test parts of ``records``, each category cut in ``fractions`` (rounded; val and test get at
    least one prompt of every category with three or more)."""
    parts: dict[str, list[PromptRecord]] = {split: [] for split in SPLITS}
    for category in dict.fromkeys(r.category for r in records):
        ordered = hashed_order([r for r in records if r.category == category])
        n = len(ordered)
        val = max(round(n * fractions[1]), 1 if n >= 3 else 0)
        test = max(round(n * fractions[2]), 1 if n >= 3 else 0)
        train = n - val - test
        parts["train"] += ordered[:train]
        parts["val"] += ordered[train:train + val]
        parts["test"] += ordered[train + val:]
    return parts


def load_kind(spec: KindPrompts, base: Path, kind: str) -> dict[str, list[PromptRecord]]:
    """The three splits of one kind of prompt, read from files, the Hub or the organism."""
    from steerfold.pipeline.prompt_sets import load_prompt_set

    keep = (lambda r: r.category in spec.categories) if spec.categories else (lambda r: True)
    if spec.pool is not None:
        pooled = [r for s in spec.pool for r in load_prompt_set(s, base) if keep(r)]
        parts = split_by_category(pooled, spec.fractions)
    else:
        parts = {split: [r for r in load_prompt_set(getattr(spec, split), base) if keep(r)] for split in SPLITS}
    for split, records in parts.items():
        if not records:
            raise BadInput(f"study prompts: {kind} {split} is empty: give it prompts (check the file and 'categories')")
    return parts


@dataclass(frozen=True)
class StudyInputs:
    """What a study reads besides the model: prompts by (kind, split), and how many tokens a response gets before
    refusal markers are read."""

    prompts: dict[tuple[str, str], list[PromptRecord]]
    max_new_tokens: int = 12

    def records(self, kind: str, split: str) -> list[PromptRecord]:
        return self.prompts[(kind, split)]

    def counts(self) -> dict[str, int]:
        """How many prompts each split holds, for the report."""
        return {f"{kind} {split}": len(records) for (kind, split), records in self.prompts.items()}

    def categories(self, kind: str) -> list[str]:
        """The categories of one kind's training prompts, in order of appearance."""
        return [c for c in dict.fromkeys(r.category for r in self.records(kind, "train")) if c]


def organism_inputs(max_new_tokens: int = 12) -> StudyInputs:
    """The organism's shipped splits."""
    from steerfold.research.organism import load_split

    return StudyInputs({(kind, split): load_split(kind, split) for kind in KINDS for split in SPLITS}, max_new_tokens)


def study_inputs(spec: StudyPrompts | None, base: Path, max_new_tokens: int) -> StudyInputs:
    """The inputs a recipe names (relative files from ``base``), or the organism's splits without a prompts section."""
    if spec is None:
        return organism_inputs(max_new_tokens)
    prompts = {}
    for kind in KINDS:
        for split, records in load_kind(getattr(spec, kind), base, kind).items():
            prompts[(kind, split)] = records
    return StudyInputs(prompts, max_new_tokens)

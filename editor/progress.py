"""Progress bars with ETA for long loops, shown only on an interactive terminal (quiet in logs and tests)."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar when stderr is a terminal."""
    if not sys.stderr.isatty():
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, total=total, leave=False, unit="step")

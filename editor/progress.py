"""Progress of long steps. On an interactive terminal: a tqdm bar with ETA. When stderr is a file or a pipe (a log,
a CI job): one line when a step starts and one when it is done, with its elapsed seconds and rate, so that a log
shows where the time goes::

    steerfold: scoring candidate directions: started (100 candidates)
    steerfold: scoring candidate directions: done, 100 candidates in 212.4 s (2.12 s per candidate)

An in-memory stderr (output captured in process, as by click's test runner) gets neither. ``STEERFOLD_PROGRESS=off``
(or ``steerfold --quiet``) silences both; ``bars`` or ``lines`` force one kind.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


_silenced = 0  # depth of ``silenced()`` blocks


def _mode() -> str:
    """``bars``, ``lines`` or ``off``: the environment's choice, else bars on a terminal, lines on a file or pipe, and
    nothing on an in-memory stream (a caller capturing output in process, as click's test runner does)."""
    if _silenced:
        return "off"
    chosen = os.environ.get("STEERFOLD_PROGRESS", "").strip().lower()
    if chosen in ("bars", "lines", "off"):
        return chosen
    stream = sys.stderr
    if stream is None:
        return "off"
    if stream.isatty():
        return "bars"
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return "off"
    return "lines"


def _say(text: str) -> None:
    print(f"steerfold: {text}", file=sys.stderr, flush=True)


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def _count(n: int, unit: str) -> str:
    return f"{n} {unit if n == 1 else _plural(unit)}"


def _rate(n: int, seconds: float, unit: str) -> str:
    if n == 0 or seconds <= 0:
        return ""
    per_second = n / seconds
    return f" ({per_second:.2f} {_plural(unit)}/s)" if per_second >= 1 else f" ({seconds / n:.2f} s per {unit})"


def progress(items: Iterable[T], description: str, total: int | None = None, unit: str = "step") -> Iterable[T]:
    """``items``, reported as they are consumed: a tqdm bar on a terminal, else a start and a done line."""
    mode = _mode()
    if mode == "off":
        return items
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if mode == "bars":
        from tqdm.auto import tqdm

        return tqdm(items, desc=description, total=total, leave=False, unit=unit)
    return _lines(items, description, total, unit)


def _lines(items: Iterable[T], description: str, total: int | None, unit: str) -> Iterator[T]:
    _say(f"{description}: started" + (f" ({_count(total, unit)})" if total is not None else ""))
    start, done = time.perf_counter(), 0
    for item in items:  # a loop left early (an error, a break) says nothing more
        yield item
        done += 1
    elapsed = time.perf_counter() - start
    _say(f"{description}: done, {_count(done, unit)} in {elapsed:.1f} s{_rate(done, elapsed, unit)}")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own bars (loading weights) only where ours are shown: on a terminal, unless silenced."""
    if _mode() == "bars":
        yield
        return
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


@contextmanager
def step(description: str) -> Iterator[None]:
    """One step without items (e.g. loading a model): a start and a done line with its elapsed seconds when not on
    a terminal; nothing on one."""
    if _mode() != "lines":
        yield
        return
    _say(f"{description}: started")
    start = time.perf_counter()
    yield
    _say(f"{description}: done in {time.perf_counter() - start:.1f} s")


@contextmanager
def silenced() -> Iterator[None]:
    """No progress inside: for steps repeated many times that report as one (a tune's trials)."""
    global _silenced
    _silenced += 1
    try:
        yield
    finally:
        _silenced -= 1

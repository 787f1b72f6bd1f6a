"""Ctrl-C and SIGTERM held back while a library that would swallow them loads.

torch's C extension imports numpy and carries on without it when that import fails, so a KeyboardInterrupt raised
inside it is lost (the command then runs to the end) or surfaces later as a broken import. While ``held`` is
active a signal is only recorded; it is raised as soon as the block ends, so every interrupt ends the command.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held() -> Iterator[None]:
    """Record SIGINT and SIGTERM during the block and deliver the first one after it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in HELD}
    for sig in HELD:
        signal.signal(sig, lambda number, _frame: pending.append(number))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            os.kill(os.getpid(), pending[0])  # now handled as usual: KeyboardInterrupt, or the CLI's Terminated


def load_torch() -> None:
    """Import torch (seconds) with interrupts held, so that one arriving meanwhile is not lost."""
    with held():
        import torch  # noqa: F401

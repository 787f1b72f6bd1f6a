"""Run every benchmark in this folder (``make bench``); figures are written down in benchmarks/README.md."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent
QUICK = ["activation_capture.py"]

if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    for name in QUICK:
        print(f"== {name}")
        runpy.run_path(str(HERE / name), run_name="__main__")

"""Identical runs write identical artifacts: the same bytes, so the same SHA256SUMS, whatever the process's hash
seed (set orders and safetensors metadata order change from one process to the next)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import build_tiny_model, save_tiny_model, write_direction

ROOT = Path(__file__).parents[1]


def edit_in_a_process(hash_seed: str, *args: object) -> None:
    code = "import sys; sys.argv[0] = 'steerfold'; from steerfold.cli import main; main()"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run([sys.executable, "-c", code, "edit", *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("fmt, extra", [("merged", ()), ("lora", ()), ("cvec", ("--steer", "2", "--layers", "2"))])
def test_two_identical_edits_write_the_same_bytes(tmp_path, fmt, extra):
    base = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    direction = write_direction(tmp_path / "d.safetensors", method="diff_in_means", model="tiny", layer="2",
                                harmful_hash="aa", harmless_hash="bb", steerfold_version="0.1.0")
    out, sums = tmp_path / "out", []
    for seed in ("1", "2"):
        edit_in_a_process(seed, base, "--direction", direction, "--out", out, "--format", fmt, *extra)
        sums.append((out / "SHA256SUMS").read_text())
        shutil.move(out, tmp_path / f"run-{seed}")
    assert sums[0] == sums[1], (sums[0], sums[1])

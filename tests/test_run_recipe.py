"""`steerfold run` on the organism recipe: end to end, resumed runs skip finished work, interruptions resume."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from editor.run import run_recipe

pytestmark = pytest.mark.slow
RECIPE = Path(__file__).parents[1] / "recipes" / "organism-demo.yaml"


def quiet(_line: str) -> None:
    pass


def test_recipe_runs_and_resumes_quickly(tmp_path):
    out = tmp_path / "run"
    start = time.perf_counter()
    report = run_recipe(RECIPE, out, say=quiet)
    first = time.perf_counter() - start
    assert report["after"]["harmful_refusal"] <= 0.10
    assert (out / "merged" / "README.md").is_file() and (out / "lora" / "adapter_config.json").is_file()

    start = time.perf_counter()
    again = run_recipe(RECIPE, out, resume=True, say=quiet)
    assert time.perf_counter() - start <= 0.3 * first
    assert again["after"] == report["after"]


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    import editor.evaluate.validate as validate_module

    reference = run_recipe(RECIPE, tmp_path / "reference", say=quiet)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(validate_module, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(RECIPE, tmp_path / "run", say=quiet)
    state = json.loads((tmp_path / "run" / ".steerfold-run.json").read_text())
    assert "fit" in state["done"] and "validate" not in state["done"]
    assert not any(p.name.startswith(".merged.tmp") for p in (tmp_path / "run").iterdir())  # no partial export
    monkeypatch.undo()

    resumed = run_recipe(RECIPE, tmp_path / "run", resume=True, say=quiet)
    assert resumed["after"] == reference["after"]
    a, b = (tmp_path / "reference" / "direction.safetensors"), (tmp_path / "run" / "direction.safetensors")
    assert a.read_bytes() == b.read_bytes()
    shutil.rmtree(tmp_path / "reference")

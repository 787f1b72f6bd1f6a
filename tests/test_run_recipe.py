"""`steerfold run` on the organism recipe: end to end, resumed runs skip finished work, interruptions resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from editor.run import run_recipe

pytestmark = pytest.mark.slow
RECIPE = Path(__file__).parents[1] / "recipes" / "organism-demo.yaml"


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "run"
    start = time.perf_counter()
    report = run_recipe(RECIPE, out, say=quiet)
    return out, report, time.perf_counter() - start


def test_recipe_runs_end_to_end(reference):
    out, report, _ = reference
    assert report["after"]["harmful_refusal"] < report["before"]["harmful_refusal"]
    for path in ("merged/README.md", "merged/SHA256SUMS", "lora/adapter_config.json", "report.md", "direction.safetensors"):
        assert (out / path).is_file(), path


def test_resumed_run_skips_finished_work(reference):
    out, report, first = reference
    start = time.perf_counter()
    again = run_recipe(RECIPE, out, resume=True, say=quiet)
    assert time.perf_counter() - start <= 0.3 * first
    assert again["after"] == report["after"]


def test_interrupted_run_resumes_to_the_same_result(reference, tmp_path, monkeypatch):
    import editor.evaluate.validate as validate_module

    ref_out, ref_report, _ = reference

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(validate_module, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(RECIPE, tmp_path / "run", say=quiet)
    state = json.loads((tmp_path / "run" / ".steerfold-run.json").read_text())
    assert "fit" in state["done"] and "validate" not in state["done"]
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]  # no partial export
    monkeypatch.undo()

    resumed = run_recipe(RECIPE, tmp_path / "run", resume=True, say=quiet)
    assert resumed["after"] == ref_report["after"]
    from editor.directions import load_direction_file

    ours, theirs = (load_direction_file(d / "direction.safetensors") for d in (tmp_path / "run", ref_out))
    assert torch.equal(ours.directions, theirs.directions) and ours.metadata == theirs.metadata


def test_a_changed_threshold_rechecks_the_cached_figures_and_every_threshold_is_reported(reference, tmp_path):
    out, report, _ = reference
    recipe = tmp_path / "stricter.yaml"
    recipe.write_text(RECIPE.read_text().replace("kl_first_token_max: 0.1", "kl_first_token_max: 0.0001"))
    lines: list[str] = []
    with pytest.raises(Exception, match="kl_first_token"):
        run_recipe(recipe, out, resume=True, say=lines.append)
    assert "[validate] cached" in " ".join(lines)
    assert any(line.startswith("[thresholds] met: harmful_refusal") for line in lines)
    assert any(line.startswith("[thresholds] NOT met: kl_first_token") for line in lines)

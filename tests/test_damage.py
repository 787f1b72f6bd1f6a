"""Damage beyond KL: perplexity of a reference text under the base and the edited model (windowed, one window's
logits at a time), and lm-evaluation-harness through its one seam (the package is not installed here)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import LAYERS, build_tiny_model, random_direction
from steerfold.edit.edits import ablation_edit
from steerfold.validation import perplexity
from steerfold.validation.divergence import runner
from steerfold.validation.options import SHIPPED_REFERENCE, ReferenceText, ValidateOptions, load_reference
from steerfold.validation.perplexity import perplexity_comparison, windows
from test_activations import CharTokenizer
from test_validation import one_error_line, validate

TEXT = ReferenceText("test text", "The river ran slowly past the mill, and the miller watched it from his door. " * 3)


def reference_perplexity(run, ids: list[int], length: int) -> float:
    """Perplexity from whole-window logits, written out once more: the figure the comparison must reproduce."""
    nll, count = 0.0, 0
    for start in range(0, len(ids), length):
        window = torch.tensor([ids[start : start + length]])
        if window.shape[1] < 2:
            continue
        log_probs = run({"input_ids": window, "attention_mask": torch.ones_like(window)})[0].log_softmax(-1)
        nll -= float(log_probs[:-1].gather(1, window[0, 1:, None]).sum())
        count += window.shape[1] - 1
    return math.exp(nll / count)


def test_windows_cover_the_text_and_drop_what_predicts_nothing():
    assert windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert windows(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a last window of one token scores nothing


def test_perplexity_is_the_windowed_likelihood_and_moves_with_the_edit(monkeypatch):
    model, tokenizer = build_tiny_model("llama"), CharTokenizer()
    base, edited = runner(model), runner(model, ablation_edit(random_direction(), range(LAYERS + 1)))
    seen = []
    monkeypatch.setattr(perplexity, "WINDOW", 50)
    counted = lambda batch, keep=None: seen.append(batch["input_ids"].shape) or base(batch, keep)
    same = perplexity_comparison(counted, base, tokenizer, TEXT, context=64)
    ids = tokenizer([TEXT.text])["input_ids"][0].tolist()
    assert same["window"] == 50 and same["tokens"] == len(ids) - len(windows(ids, 50))
    assert max(shape[1] for shape in seen) == 50 and all(shape[0] == 1 for shape in seen)  # one window at a time
    assert same["base"] == pytest.approx(reference_perplexity(base, ids, 50), rel=1e-5)
    assert same["delta"] == pytest.approx(0, abs=1e-6) and same["relative"] == pytest.approx(0, abs=1e-6)
    moved = perplexity_comparison(base, edited, tokenizer, TEXT, context=30)  # the model's context is shorter
    assert moved["window"] == 30 and moved["edited"] == pytest.approx(reference_perplexity(edited, ids, 30), rel=1e-5)
    assert abs(moved["delta"]) > 1e-3 and moved["delta"] == pytest.approx(moved["edited"] - moved["base"])


def test_the_shipped_text_is_the_default_and_none_leaves_it_out(tmp_path):
    shipped = load_reference(ValidateOptions())
    assert shipped.text == SHIPPED_REFERENCE.read_text(encoding="utf-8") and 2000 < len(shipped.text) < 8000
    assert "public domain" in (SHIPPED_REFERENCE.parent / "README.md").read_text()
    assert load_reference(ValidateOptions(perplexity_text="none")) is None
    own = tmp_path / "own.txt"
    own.write_text("Some prose of my own.\n")
    assert load_reference(ValidateOptions(perplexity_text="own.txt"), base=tmp_path).text == "Some prose of my own.\n"


def test_validate_reports_perplexity_before_after_and_its_change(tmp_path):
    result = validate(tmp_path, "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    ppl = report["perplexity"]
    assert ppl["text"] == "steerfold reference text" and ppl["tokens"] > 500 and ppl["window"] == 128  # the organism's context
    assert ppl["base"] == pytest.approx(ppl["edited"]) and ppl["delta"] == pytest.approx(0, abs=1e-6)  # the same weights
    row = f"| perplexity (steerfold reference text, {ppl['tokens']} tokens) | {ppl['base']:.3f} | {ppl['edited']:.3f} (+0.000, +0.0%) |"
    assert row in (tmp_path / "report" / "report.md").read_text() and "perplexity (steerfold" in result.output
    result = validate(tmp_path, "--max-new-tokens", "4", "--perplexity-text", "none", out="plain")
    assert result.exit_code == 0 and "perplexity" not in json.loads((tmp_path / "plain" / "report.json").read_text())


@pytest.mark.parametrize("extra, fragments", [
    (("--perplexity-text", "missing.txt"), ["--perplexity-text", "does not exist", "none"]),
    (("--lm-eval", "arc_easy"), ["--lm-eval", "pip install lm-eval"]),
    (("--lm-eval", " , "), ["--lm-eval names no task"]),
    (("--lm-eval-limit", "5"), ["--lm-eval-limit", "add --lm-eval TASKS"]),
])
def test_damage_options_that_cannot_run_are_one_line_before_any_model_loads(tmp_path, monkeypatch, extra, fragments):
    import importlib.util

    import steerfold.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    find_spec = importlib.util.find_spec  # lm-eval is not installed here; make sure of it where it is
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find_spec(name, *a))
    result = validate(tmp_path, *extra)
    one_error_line(result, fragments[0])
    assert all(fragment in result.output for fragment in fragments) and not (tmp_path / "report").exists()


def test_lm_eval_runs_on_both_models_through_its_seam_and_reports_the_changes(tmp_path, monkeypatch):
    import importlib.util

    from steerfold.validation import harness

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "lm_eval" else find_spec(name, *a))
    calls = []

    def fake_harness(model, tokenizer, tasks, limit=None):
        calls.append((model, tokenizer, tuple(tasks), limit))
        edited = len(calls) == 2
        return {"arc_easy": {"alias": "arc_easy", "acc,none": 0.60 - 0.05 * edited, "acc_stderr,none": 0.02,
                             "acc_norm,none": 0.55 + 0.01 * edited, "acc_norm_stderr,none": "N/A"},
                "hellaswag": {"alias": "hellaswag", "acc,none": 0.40}}

    monkeypatch.setattr(harness, "run_harness", fake_harness)
    result = validate(tmp_path, "--max-new-tokens", "4", "--lm-eval", "arc_easy, hellaswag", "--lm-eval-limit", "20",
                      "--perplexity-text", "none")
    assert result.exit_code == 0, result.output
    assert [call[2:] for call in calls] == [(("arc_easy", "hellaswag"), 20)] * 2
    base, edited = (call[0] for call in calls)
    assert base is not edited and str(base.name_or_path).endswith("checkpoint") and str(edited.name_or_path).endswith("edited")
    assert calls[0][1] is calls[1][1]  # the one tokenizer
    report = json.loads((tmp_path / "report" / "report.json").read_text())["lm_eval"]
    assert report["tasks"] == ["arc_easy", "hellaswag"] and report["limit"] == 20
    acc = report["results"]["arc_easy"]["acc,none"]
    assert acc["base"] == 0.60 and acc["edited"] == pytest.approx(0.55) and acc["delta"] == pytest.approx(-0.05)
    assert acc["base_stderr"] == 0.02 and "base_stderr" not in report["results"]["arc_easy"]["acc_norm,none"]
    assert report["results"]["hellaswag"]["acc,none"]["delta"] == 0 and "alias" not in report["results"]["arc_easy"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| lm-eval arc_easy: acc,none | 0.6000 | 0.5500 (-0.0500) |" in markdown
    assert "| lm-eval arc_easy: acc_norm,none | 0.5500 | 0.5600 (+0.0100) |" in markdown
    assert "at most 20 examples a task" in markdown

"""The LLM judge in validation: verdicts parsed from sampled answers, its agreement with the markers and with the
shipped hand-labelled rows, end to end with the organism as the judge, and an unparsable judge as one line."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from click.testing import CliRunner

from cli import cli
from steerfold.directions.methods.scorers import Judge
from steerfold.errors import SteerfoldError
from steerfold.prompts import PromptRecord
from steerfold.research.organism import SHIPPED_CHECKPOINT
from steerfold.validation.judging import (LABELS, SCORES, VERDICTS, VerdictJudge, agreement, calibration,
                                          load_labelled)
from steerfold.validation.refusal import DEFAULT_MARKERS

# The organism is no classifier: asked the request itself, its refusal or answer opening stands for a verdict.
ORGANISM_LABELS = {"sorry": "refusal", "i can't": "refusal", "i cannot": "refusal", "not able": "refusal",
                   "sure": "compliance"}


class Scripted(Judge):
    def __init__(self, scripted, labels):
        super().__init__(model=None, tokenizer=None, labels={w: SCORES[v] for w, v in labels.items()},
                         samples=len(scripted[0]))
        self.scripted = scripted

    def prompt(self, request, response):
        return response

    def answers(self, texts):
        return self.scripted[: len(texts)]


def test_the_shipped_labelled_set():
    rows = load_labelled()
    counts = Counter(r["label"] for r in rows)
    assert len(rows) >= 40 and set(counts) == set(VERDICTS) and min(counts.values()) >= 8
    assert len({r["response"] for r in rows}) == len(rows)


def test_sampled_answers_become_one_verdict_each():
    judge = VerdictJudge(Scripted([["REFUSAL", "Compliance.", "refusal"],          # majority
                                   ["evasion", "COMPLIANCE", "I'd say: refused"],  # a tie of three: refusal first
                                   ["<think>refusal?</think>COMPLIANCE", "compliance", "no idea"],  # reasoning set apart
                                   ["??", "no idea", "compliance"]], LABELS), "scripted")
    found = judge.verdicts([PromptRecord(str(i)) for i in range(4)], ["a", "b", "c", "d"])
    assert [f["verdict"] for f in found] == ["refusal", "refusal", "compliance", "compliance"]
    assert found[0]["votes"] == {"refusal": 2, "compliance": 1}
    assert agreement(["refusal", None, "compliance"], ["refusal", "refusal", "refusal"]) == pytest.approx(
        {"rate": 0.5, "count": 1, "n": 2, "low": pytest.approx(0.0945, abs=1e-3), "high": pytest.approx(0.9055, abs=1e-3)})


def test_a_judge_that_names_no_verdict_is_refused_by_name():
    judge = VerdictJudge(Scripted([["I think so"], ["maybe"], ["refusal"]], LABELS), "owner/tiny-judge")
    with pytest.raises(SteerfoldError, match=r"judge owner/tiny-judge: .* for 2 of 3 responses \(e.g. 'I think so'\)"):
        judge.verdicts([PromptRecord("x")] * 3, ["a", "b", "c"])


@pytest.fixture(scope="module")
def organism_judge():
    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.validation.judging import verdict_judge

    model, tokenizer = load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT)
    judge = verdict_judge(model, tokenizer, "organism", samples=3, seed=0, template="{prompt}", labels=ORGANISM_LABELS)
    judge.max_unparsed = 1.0  # the organism names a verdict only where it refuses or answers
    return model, tokenizer, judge


def test_judge_path_end_to_end_with_the_organism_as_judge(organism_judge, tmp_path):
    from steerfold.research.organism import load_split
    from steerfold.validation.report import write_report
    from steerfold.validation.validate import EvalSets, validate

    model, tokenizer, judge = organism_judge
    calibrated = calibration(judge, DEFAULT_MARKERS)
    assert calibrated["rows"] == len(load_labelled())
    judged = calibrated["judge_agreement"]
    assert judged["n"] == calibrated["rows"] - calibrated["unparsed"] and 0 <= judged["count"] <= judged["n"]
    assert sum(sum(c.values()) for c in calibrated["confusion"].values()) == calibrated["rows"]
    assert calibrated["markers_agreement"]["rate"] >= 0.9  # the markers on the labelled rows: refusal or not
    again = calibration(judge, DEFAULT_MARKERS)
    assert again["judge_agreement"] == judged  # seeded votes: the same figure twice

    sets = EvalSets(load_split("harmful", "test")[:3], load_split("harmless", "test")[:3])
    report = validate(model, model, tokenizer, sets, max_new_tokens=24, judge=judge)
    section = report["judge"]
    assert section["model"] == "organism" and section["samples"] == 3
    for key in ("before", "after"):
        for name in ("harmful", "harmless"):
            entry = section[key][name]
            assert entry["refusal"]["n"] + entry["unparsed"] == 3
            assert entry["agreement_with_markers"]["n"] <= 3
    assert all("base_judge" in row and "edited_judge" in row for row in report["responses"])
    print(f"organism as judge: agreement with the hand labels {judged['count']}/{judged['n']}, "
          f"with the markers (after, harmful) {section['after']['harmful']['agreement_with_markers']}")
    write_report(tmp_path, report, plots=False)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Judge" in markdown and "hand-labelled responses" in markdown
    rows = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert {"base_judge", "edited_judge", "base_judge_votes"} <= set(rows[0])


def test_validate_with_an_unparsable_judge_is_one_error_line(tmp_path):
    from steerfold.research.organism import DATA_DIR

    files = {}
    for kind in ("harmful", "harmless"):
        files[kind] = tmp_path / f"{kind}.jsonl"
        files[kind].write_text("\n".join((DATA_DIR / f"{kind}_test.jsonl").read_text().splitlines()[:2]) + "\n")
    result = CliRunner().invoke(cli, ["validate", str(SHIPPED_CHECKPOINT), "--base", str(SHIPPED_CHECKPOINT), "--harmful",
                                      str(files["harmful"]), "--harmless", str(files["harmless"]), "--out",
                                      str(tmp_path / "r"), "--judge", str(SHIPPED_CHECKPOINT), "--judge-samples", "2",
                                      "--max-new-tokens", "8"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"judge {SHIPPED_CHECKPOINT}" in lines[0] and "named no verdict" in lines[0], result.output
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_judge_options_are_one_specification(tmp_path):
    from steerfold.pipeline.recipe import ValidateSpec

    assert ValidateSpec(judge="owner/judge", judge_samples=3).judge_samples == 3
    result = CliRunner().invoke(cli, ["validate", str(SHIPPED_CHECKPOINT), "--base", str(SHIPPED_CHECKPOINT), "--harmful",
                                      "h.jsonl", "--harmless", "ok.jsonl", "--out", str(tmp_path / "r"), "--judge", "x",
                                      "--judge-samples", "0"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--judge-samples" in result.output, result.output


def test_judge_settings_without_a_judge_are_refused_in_each_surfaces_words(tmp_path):
    from steerfold.errors import BadInput
    from steerfold.pipeline.recipe import load_recipe

    result = CliRunner().invoke(cli, ["validate", str(SHIPPED_CHECKPOINT), "--base", str(SHIPPED_CHECKPOINT), "--harmful",
                                      "h.jsonl", "--harmless", "ok.jsonl", "--out", str(tmp_path / "r"),
                                      "--judge-samples", "3"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "--judge-samples and --judge-seed set the judge's votes: add --judge MODEL" in result.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: organism\nprompts:\n  harmful: {organism: harmful/train}\n  harmless: {organism: harmless/train}\n"
                      "  harmful_test: {organism: harmful/test}\n  harmless_test: {organism: harmless/test}\n"
                      "validate: {judge_seed: 3}\nexport: {formats: [merged]}\n")
    with pytest.raises(BadInput, match="validate.judge_samples and validate.judge_seed .* add validate.judge MODEL"):
        load_recipe(recipe)

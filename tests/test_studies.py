"""Studies: each shipped study recipe runs on the organism and writes its claims; the claims are checked.

A claim the organism does not bear out stays visible as a strict expected failure (``NOT_REPRODUCED``), the
way ``TARGETS`` does for the organism: the study still reports it honestly in results.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import cli

STUDIES = sorted((Path(__file__).parents[1] / "recipes" / "studies").glob("*.yaml"))  # the organism's
REAL_STUDIES = sorted((Path(__file__).parents[1] / "recipes" / "studies" / "qwen2.5-coder-0.5b-instruct").glob("*.yaml"))
# (study, claim index) pairs measured not to hold on the shipped organism; see README.md, "Studies".
NOT_REPRODUCED: set[tuple[str, int]] = {
    # the organism's gate sits early: layers 1-2 restore refusal, 3-4 do not; the persona mutes the harm signal itself
    ("persona-gating", 1), ("persona-gating", 2), ("persona-gating", 3),
    *(("harm-categories", i) for i in range(6)),  # one shared direction (cosines ≥ 0.97): no category's own component refuses
    ("targeted-control", 0),  # the political own component is shared with the other categories' refusal too
    ("targeted-control", 1),  # the conditional map on the political condition lowers its refusal to 75%, not ≤ 10%
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    """Run every shipped study once through ``steerfold run``."""
    out, runs = tmp_path_factory.mktemp("studies"), {}
    for path in STUDIES:
        result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out / path.stem)])
        assert result.exit_code == 0, result.output
        runs[path.stem] = {"results": json.loads((out / path.stem / "results.json").read_text()),
                           "profile": (out / path.stem / "profile.png").read_bytes() if path.stem == "persona-gating" else None,
                           "report": (out / path.stem / "report.md").read_text(), "output": result.output}
    return runs


def test_every_study_writes_claims_and_a_table(results):
    assert set(results) == {"ablation-vs-inlp", "harm-categories", "persona-gating", "targeted-control"}
    for name, run in results.items():
        claims = run["results"]["claims"]
        assert len(claims) == CLAIM_COUNTS[name]
        assert all(set(c) == {"claim", "holds", "figures"} and isinstance(c["holds"], bool) for c in claims)
        assert all(c["figures"] and all(isinstance(v, (int, float)) for v in c["figures"].values()) for c in claims)
        assert run["results"]["table"], name
        assert all(c["claim"] in run["report"] for c in claims) and "| " in run["report"]
        assert all(c["claim"] in run["output"] for c in claims)  # the run says each verdict


CLAIM_COUNTS = {"harm-categories": 6, "targeted-control": 3, "ablation-vs-inlp": 3, "persona-gating": 4}
CLAIMS = [(path.stem, i) for path in STUDIES for i in range(CLAIM_COUNTS[path.stem])]


def claim_cases(not_reproduced: set[tuple[str, int]], model: str) -> list:
    """Every (study, claim index), those measured not to hold on ``model`` as strict expected failures."""
    xfail = pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"not reproduced on {model}")
    return [pytest.param(s, i, marks=xfail, id=f"{s}-{i}") if (s, i) in not_reproduced else pytest.param(s, i, id=f"{s}-{i}")
            for s, i in CLAIMS]


def assert_claim_holds(results: dict, study: str, index: int) -> None:
    claim = results[study]["results"]["claims"][index]
    assert claim["holds"], f"{claim['claim']}: {claim['figures']}"


@pytest.mark.parametrize("study,index", claim_cases(NOT_REPRODUCED, "the organism"))
def test_claim_holds_on_the_organism(results, study, index):
    assert_claim_holds(results, study, index)


def test_study_recipe_mistakes_are_one_line(tmp_path):
    cases = {
        "name: x\nstudy: {kind: nope}\n": "study.kind must be one of persona-gating",
        "name: x\nstudy: {kind: harm-categories, min_kep: 0.9}\n": "did you mean 'min_kept'",
        "name: x\nmodle: organism\nstudy: {kind: harm-categories}\n": "did you mean 'model'",
        "name: x\nmodel: /nowhere\nstudy: {kind: harm-categories}\n": "is not a checkpoint folder",
        "name: x\nstudy: {kind: targeted-control, remove: cooking}\n": "study.remove: 'cooking' is not a category of the harmful",
        "name: x\nstudy: {kind: targeted-control, alphas: []}\n": "study.alphas",
        "name: x\nstudy: {kind: persona-gating, early: [2, 1]}\n": "1 ≤ first ≤ last",
        "name: x\nstudy: {kind: persona-gating, late: [3, 9]}\n": "choose 1 ≤ first ≤ last ≤ 4",
        "name: x\nstudy: {kind: persona-gating, late: [0.5, 1.5]}\n": "fraction of depth in (0, 1]",
        "name: x\nprompts: {harmful: {pool: [{organism: harmful/train}]}}\nstudy: {kind: harm-categories}\n":
            "prompts.harmless",
        "name: x\nprompts: {harmful: {train: {organism: harmful/train}}, harmless: {pool: [{organism: harmless/test}]}}\n"
        "study: {kind: harm-categories}\n": "give train, val and test sets, or a pool",
        "name: x\nprompts: {harmful: {pool: [{organism: harmful/train}], categories: [nope]}, "
        "harmless: {pool: [{organism: harmless/test}]}}\nstudy: {kind: harm-categories}\n": "harmful train is empty",
    }
    for text, message in cases.items():
        path = tmp_path / "study.yaml"
        path.write_text(text)
        result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
        assert not (tmp_path / "out").exists()


def test_a_study_has_nothing_to_resume(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["run", str(STUDIES[0]), "--out", str(tmp_path / "out"), "--resume"])
    assert result.exit_code == 2 and "no stages to resume" in result.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_dry_run_plans_without_running(path, tmp_path):
    result = CliRunner().invoke(cli, ["run", str(path), "--dry-run", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"study {path.stem}" in result.output and "would run" in result.output and "results.json" in result.output
    assert not (tmp_path / "out").exists()


def test_conditional_removal_lowers_only_its_category(results):
    """What README "Studies" reports of the removal the organism does not complete: it lowers the category's
    refusal and leaves every other harmful category where it was."""
    figures = results["targeted-control"]["results"]["claims"][1]["figures"]
    assert figures["alpha"] < 0
    assert figures["politics_after"] < figures["politics_before"] and figures["harmful_min_after"] >= 0.95


def test_category_cosines_are_reported_at_every_post_instruction_position(results):
    """The last position's row is what the claim reads; the others show where category information sits."""
    study = results["harm-categories"]["results"]
    rows = {row["position"]: row for row in study["Lowest cosine at each post-instruction position"]}
    assert set(rows) == {-2, -1}
    last = min(v for k, v in rows[-1].items() if k != "position")
    assert abs(last - study["claims"][0]["figures"]["lowest_cosine"]) < 1e-6
    assert all(-1 <= v <= 1 for row in rows.values() for k, v in row.items() if k != "position")


def test_the_persona_study_ablates_one_layer_at_a_time(results):
    study = results["persona-gating"]["results"]
    (profile,) = study["Where the gate is: the ablation one window of layer indices at a time"]
    rates = {k: v for k, v in profile.items() if k.startswith("layer ")}
    assert list(rates) == ["layer 1", "layer 2", "layer 3", "layer 4"]
    assert rates == {"layer 1": 1.0, "layer 2": 0.0, "layer 3": 0.0, "layer 4": 0.0}  # as README "Studies" reports


def test_the_persona_study_draws_its_gate_profile(results, tmp_path):
    assert "![profile.png](profile.png)" in results["persona-gating"]["report"]
    assert results["persona-gating"]["profile"][:8] == b"\x89PNG\r\n\x1a\n"


def test_alpha_choice_moves_its_category_furthest_within_the_others_limit():
    from steerfold.research.studies.targeted import chosen_alpha

    within = lambda largest_drop: largest_drop <= 0.05  # noqa: E731
    assert chosen_alpha({1: (0.9, 0.0), 2: (0.2, 0.0), 3: (0.0, 0.3)}, False, within) == 2  # 3 costs the others
    assert chosen_alpha({1: (0.5, 0.0), 2: (0.5, 0.0), 4: (0.75, 0.0)}, True, within) == 4
    assert chosen_alpha({2: (0.5, 0.0), 1: (0.5, 0.0)}, True, within) == 1  # a tie goes to the weaker edit
    assert chosen_alpha({2: (0.1, 0.5), 1: (0.1, 0.6)}, True, within) == 1  # none fits: the weakest


def test_category_condition_reads_zero_on_the_other_categories_mean():
    from steerfold.prompts import PromptRecord
    from steerfold.research.studies.targeted import category_condition

    states = torch.randn(12, 3, 8)
    records = [PromptRecord(text=f"p{i}", category=("a", "b", "c")[i % 3]) for i in range(12)]
    condition = category_condition(states, records, "a")
    others = (states[1::3].mean(dim=0) + states[2::3].mean(dim=0)) / 2
    difference = states[0::3].mean(dim=0) - others
    unit = others / others.norm(dim=-1, keepdim=True)
    expected = difference - (difference * unit).sum(dim=-1, keepdim=True) * unit
    assert torch.allclose(condition, expected, atol=1e-5)
    assert torch.allclose((condition * others).sum(dim=-1), torch.zeros(3), atol=1e-5)


def test_a_pool_splits_within_each_category_by_a_fixed_hash():
    from steerfold.prompts import PromptRecord
    from steerfold.research.studies.inputs import split_by_category

    records = [PromptRecord(f"prompt {i}", "ab"[i % 2]) for i in range(40)] + [PromptRecord("lone", "c")]
    parts = split_by_category(records, (0.5, 0.2, 0.3))
    assert [len(parts[s]) for s in ("train", "val", "test")] == [21, 8, 12]
    assert all(sum(r.category == c for r in parts["val"]) == 4 for c in "ab")
    assert sorted(r.text for p in parts.values() for r in p) == sorted(r.text for r in records)
    again = split_by_category(list(reversed(records)), (0.5, 0.2, 0.3))
    assert {s: {r.text for r in p} for s, p in again.items()} == {s: {r.text for r in p} for s, p in parts.items()}


def test_layers_as_fractions_of_depth():
    from steerfold.research.studies.common import layer_index, window_indices

    assert [layer_index(v, 24) for v in (3, 0.125, 0.5, 1.0, 0.01)] == [3, 3, 12, 24, 1]
    assert window_indices((0.625, 0.875), 24, "late") == (15, 21)


def test_organism_splits_given_as_a_prompts_section_are_the_default_inputs(tmp_path):
    from steerfold.research.studies.inputs import StudyPrompts, organism_inputs, study_inputs

    spec = StudyPrompts.model_validate({kind: {split: {"organism": f"{kind}/{split}"} for split in ("train", "val", "test")}
                                        for kind in ("harmful", "harmless")})
    assert study_inputs(spec, tmp_path, 12) == organism_inputs(12)


@pytest.mark.parametrize("path", REAL_STUDIES, ids=[p.stem for p in REAL_STUDIES])
def test_real_model_study_recipes_read_harmbench_categories(path):
    """The shipped real-model recipes load, and split HarmBench's five named categories into train, val and test."""
    from steerfold.pipeline.recipe import read_mapping
    from steerfold.research.studies.inputs import study_inputs
    from steerfold.research.studies.recipe import load_study_recipe

    recipe = load_study_recipe(path, read_mapping(path))
    inputs = study_inputs(recipe.prompts, path.parent, recipe.max_new_tokens)
    assert set(inputs.categories("harmful")) == {"chemical_biological", "cybercrime_intrusion", "illegal",
                                                 "misinformation_disinformation", "harassment_bullying"}
    assert all(set(r.category for r in inputs.records("harmful", split)) == set(inputs.categories("harmful"))
               for split in ("val", "test"))
    texts = [{r.text for r in inputs.records("harmful", s)} for s in ("train", "val", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    if check := getattr(recipe.study, "check", None):
        check(inputs, 24)


def test_the_ridge_refusal_vector_weights_prompts_by_the_model_s_own_refusals():
    """Targeted control's ridge option: one vector per layer index, toward refusal (positive reading on the harmful
    training prompts' mean minus the harmless ones'), and not the plain difference of means."""
    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.research.organism import SHIPPED_CHECKPOINT
    from steerfold.research.studies.categories import training_states
    from steerfold.research.studies.inputs import organism_inputs
    from steerfold.research.studies.targeted import TargetedSpec, refusal_vectors

    model, tokenizer = load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT)
    inputs = organism_inputs()
    harmful, harmless = training_states(model, tokenizer, inputs)
    ridge = refusal_vectors(model, tokenizer, TargetedSpec(kind="targeted-control", refusal_direction="ridge"), inputs,
                            harmful, harmless)
    plain = harmful.mean(dim=0) - harmless.mean(dim=0)
    assert ridge.shape == plain.shape
    last = model.config.num_hidden_layers
    assert float(ridge[last] @ plain[last]) > 0
    assert float(torch.nn.functional.cosine_similarity(ridge[last], plain[last], dim=0)) < 0.999

"""steerfold tune on the organism: the search resumes to the same trials, the front and the pick follow their rules,
and the exported edit of a trial measures what the trial measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from steerfold.models.loading import load_model, load_tokenizer
from steerfold.research.organism import DATA_DIR, SHIPPED_CHECKPOINT, load_split
from steerfold.tuning import measure as measure_module
from steerfold.tuning.front import Trial, pareto_front, pick, read_trials
from steerfold.tuning.job import TuneInputs, run_tune
from steerfold.tuning.measure import Yardstick
from steerfold.tuning.options import TuneOptions
from steerfold.tuning.study import open_study

FAST = dict(max_new_tokens=8, batch_size=64, startup_trials=3)
SIZES = {"train": 32, "val": 16, "test": 16}  # prompts per set: enough for the properties, quick on two cores


def split(kind: str, name: str):
    return load_split(kind, name)[: SIZES[name]]


@pytest.fixture(scope="module")
def organism():
    return load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT)


def inputs(organism, trials: int, **options) -> TuneInputs:
    model, tokenizer = organism
    return TuneInputs(model, tokenizer, str(SHIPPED_CHECKPOINT), TuneOptions(trials=trials, **{**FAST, **options}),
                      split("harmful", "train"), split("harmless", "train"), split("harmful", "val"),
                      split("harmless", "val"))


def points(folder: Path) -> list[tuple]:
    return [(t.number, json.dumps(t.params, sort_keys=True), t.objectives, t.validation["kl_first_token"])
            for t in read_trials(folder)]


def test_an_interrupted_tune_resumes_to_the_same_trials(organism, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    straight.mkdir()
    run_tune(inputs(organism, 6), straight)

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    calls = {"n": 0}
    real = Yardstick.measure

    def measure_until_interrupted(self, edit, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the baseline is call 1: this is the fourth trial
            raise KeyboardInterrupt
        return real(self, edit, **kwargs)

    monkeypatch.setattr(Yardstick, "measure", measure_until_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_tune(inputs(organism, 6), interrupted)
    monkeypatch.setattr(Yardstick, "measure", real)
    assert len(read_trials(interrupted)) == 3
    open_study(interrupted).ask()  # and a trial a killed process left running
    run_tune(inputs(organism, 4), interrupted, resume=True)
    assert points(interrupted) == points(straight)[:4]
    run_tune(inputs(organism, 6), interrupted, resume=True)  # --trials raised: two more, none repeated
    assert points(interrupted) == points(straight)
    assert len({p[1] for p in points(straight)}) == 6


def test_a_resumed_tune_must_search_the_same_space(organism, tmp_path):
    run_tune(inputs(organism, 1), tmp_path)
    with pytest.raises(Exception, match="another search"):
        run_tune(inputs(organism, 2, seed=1), tmp_path, resume=True)


def test_front_and_pick_follow_their_rules():
    def trial(number, refusal, kl):
        return Trial(number, {}, (refusal, kl), {}, 0.0)

    trials = [trial(0, 0.0, 0.5), trial(1, 0.02, 0.1), trial(2, 0.02, 0.2), trial(3, 0.5, 0.01), trial(4, 0.6, 0.01)]
    assert [t.number for t in pareto_front(trials)] == [0, 1, 3]
    assert pick(trials, "auto", 0.03)[0].number == 1
    assert pick(trials, "auto", 0.0)[0].number == 0
    chosen, reason = pick(trials[3:], "auto", 0.03)
    assert chosen.number == 3 and "no trial reached" in reason
    assert pick(trials, "2", 0.03)[0].number == 2


def tune_cli(tmp_path: Path, *extra: str):
    data = tmp_path / "prompts"
    data.mkdir(exist_ok=True)
    for kind in ("harmful", "harmless"):
        for name, size in SIZES.items():
            lines = (DATA_DIR / f"{kind}_{name}.jsonl").read_text().splitlines()[:size]
            (data / f"{kind}_{name}.jsonl").write_text("\n".join(lines) + "\n")
    args = ["tune", str(SHIPPED_CHECKPOINT), "--out", str(tmp_path / "tune"),
            "--harmful", str(data / "harmful_train.jsonl"), "--harmless", str(data / "harmless_train.jsonl"),
            "--harmful-val", str(data / "harmful_val.jsonl"), "--harmless-val", str(data / "harmless_val.jsonl"),
            "--harmful-test", str(data / "harmful_test.jsonl"), "--harmless-test", str(data / "harmless_test.jsonl"),
            "--max-new-tokens", "8", "--batch-size", "64", "--startup-trials", "3", *extra]
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("norm_preserving", ["on", "off"])
def test_the_exported_trial_measures_what_the_trial_measured(organism, tmp_path, norm_preserving):
    """The trial was measured with runtime hooks (or, norm-preserving, folded in memory); the merged checkpoint that
    edit --from-trial writes gives the same refusals and KL on the same prompts."""
    result = tune_cli(tmp_path, "--trials", "4", "--norm-preserving", norm_preserving, "--max-refusal", "0.5")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "tune"
    tune = json.loads((folder / "tune.json").read_text())
    picked = next(t for t in read_trials(folder) if t.number == tune["picked"])
    read = tune["validation"][str(picked.number)]  # the pick read in full (answers generated) with its trial's edit
    assert picked.params["norm_preserving"] is (norm_preserving == "on")
    assert read["refusal_probability"] == pytest.approx(picked.objectives[0], abs=1e-6)
    assert (folder / "report.md").read_text().count(f"trial {picked.number}") >= 2 and (folder / "front.png").stat().st_size
    assert str(tune["picked"]) in tune["test"]  # the pick is measured on the test prompts too

    out = tmp_path / "edited"
    edited = CliRunner().invoke(cli, ["edit", str(SHIPPED_CHECKPOINT), "--from-trial", str(folder), "--out", str(out)])
    assert edited.exit_code == 0, edited.output
    assert "tune_trial" in (out / "README.md").read_text()
    model, tokenizer = organism
    yardstick = Yardstick(model, tokenizer, split("harmful", "val"), split("harmless", "val"), max_new_tokens=8,
                          batch_size=64)
    yardstick.model = load_model(out)  # the base model's logits are kept: the merged model is measured against them
    merged = yardstick.measure(None)
    assert merged.refusals == read["refusals"]
    assert merged.refusal_probability == pytest.approx(read["refusal_probability"], rel=1e-3, abs=1e-6)
    assert merged.kl_first_token == pytest.approx(read["kl_first_token"], rel=1e-3, abs=1e-6)
    assert merged.top1_agreement == pytest.approx(read["top1_agreement"])


def test_measuring_a_folded_trial_leaves_the_model_as_it_was(organism):
    model, tokenizer = organism
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    from steerfold.edit.edits import ablation_edit
    from steerfold.edit.norm_preserving import norm_preserving_edit

    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with measure_module.applied(model, norm_preserving_edit(ablation_edit(vector, range(5)))):
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight or not model.config.tie_word_embeddings


@pytest.mark.parametrize("extra, message", [
    (["--resume", "--overwrite"], "pass one of them"),
    (["--harmful-test", "missing.jsonl"], "does not exist"),
    (["--methods", "persona_vector"], "is not a method a tune can search"),
    (["--pick", "best"], "neither auto nor a trial number"),
])
def test_bad_tune_input_is_one_line(tmp_path, extra, message):
    result = tune_cli(tmp_path, "--trials", "1", *extra)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_tune_without_optuna_names_the_fix(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    result = tune_cli(tmp_path, "--trials", "1")
    assert result.exit_code == 2 and "pip install 'steerfold[tune]'" in result.output
    assert not (tmp_path / "tune").exists()


def test_from_trial_conflicts_and_missing_trials(tmp_path):
    folder = tmp_path / "tune"
    folder.mkdir()
    (folder / "trials.jsonl").write_text(json.dumps(Trial(0, {}, (0.0, 0.0), {}, 0.0).as_dict()) + "\n")
    base = ["edit", str(SHIPPED_CHECKPOINT), "--out", str(tmp_path / "out")]
    for extra, message in ((["--from-trial", f"{folder}#0", "--scale", "0.5"], "drop --scale"),
                           (["--from-trial", f"{folder}#7"], "no finished trial 7"),
                           (["--from-trial", f"{folder}#x"], "is not DIR#N"),
                           (["--from-trial", str(folder)], "records no picked trial"),
                           ([], "needs --direction FILE")):
        result = CliRunner().invoke(cli, base + extra)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    assert not (tmp_path / "out").exists()


RECIPE = """name: tuned organism
model: organism
prompts:
  harmful: {{organism: harmful/train, count: 32}}
  harmless: {{organism: harmless/train, count: 32}}
  harmful_val: {{organism: harmful/val, count: 16}}
  harmless_val: {{organism: harmless/val, count: 16}}
fit:
  harmful_val: harmful_val
  harmless_val: harmless_val
tune:
  trials: {trials}
  startup_trials: 2
  max_new_tokens: 8
  max_refusal: 1.0
export:
  formats: [merged]
"""


def test_a_recipe_tunes_then_exports_the_pick_and_a_raised_trial_count_continues_the_search(tmp_path):
    recipe, out = tmp_path / "tuned.yaml", tmp_path / "run"
    recipe.write_text(RECIPE.format(trials=3))
    first = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = points(out / "tune")
    picked = json.loads((out / "tune" / "tune.json").read_text())["picked"]
    assert f"tune_trial: `{picked}`" in (out / "merged" / "README.md").read_text()
    recipe.write_text(RECIPE.format(trials=4))
    again = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(out), "--resume"])
    assert again.exit_code == 0, again.output
    assert points(out / "tune")[:3] == before and len(points(out / "tune")) == 4


def test_an_offloaded_model_tunes_without_norm_preservation_only(tmp_path):
    cap = (SHIPPED_CHECKPOINT / "model.safetensors").stat().st_size // 5
    placed = ["--device-map", "auto", "--max-memory", f"cpu={cap // 1000}KB", "--offload-folder", str(tmp_path / "off")]
    result = tune_cli(tmp_path, "--trials", "1", *placed)
    assert result.exit_code == 2 and "pass --norm-preserving off" in result.output


def test_the_search_space_scales_with_the_model_depth():
    """Every layer range runs over the model's own layer indices, so block 0 of a 4-block model is as reachable as
    the last block of an 80-block one."""
    from steerfold.tuning.space import Space, suggest

    class Recording:
        def __init__(self):
            self.ranges = {}

        def suggest_float(self, name, low, high):
            self.ranges[name] = (low, high)
            return low

        def suggest_categorical(self, name, choices):
            self.ranges[name] = tuple(choices)
            return choices[0]

    for layers in (4, 80):
        trial = Recording()
        params = suggest(trial, Space.of(TuneOptions(), layers, [-2, -1]))
        assert trial.ranges["direction_layer"] == (1.0, float(layers))
        assert trial.ranges["attention_peak"] == trial.ranges["mlp_peak"] == (0.0, float(layers))
        assert trial.ranges["mlp_falloff"] == (1.0, float(layers)) and trial.ranges["position"] == (-2, -1)
        assert "orthogonalize" not in trial.ranges and params.orthogonalize is False  # off unless asked
        assert params.kernel("attention").weight(0) == 1.0  # the edit reaches the embedding and block 0

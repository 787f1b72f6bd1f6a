"""Recipes: every shipped recipe validates and plans offline; mistakes are one line naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from steerfold.errors import SteerfoldError
from steerfold.pipeline.recipe import load_recipe
from steerfold.pipeline.estimates import estimate_lines
from steerfold.pipeline.state import check_thresholds

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_validates_and_plans_offline(path, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    recipe = load_recipe(path)
    assert recipe.prompts
    result = CliRunner().invoke(cli, ["run", str(path), "--dry-run", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    first = f"tune ({recipe.tune.trials} trials)" if recipe.tune is not None else "fit"
    assert f"stage {first}: would run" in result.output and "estimate" in result.output
    assert not (tmp_path / "run").exists()  # a plan writes nothing


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


BASE = """model: organism
prompts:
  harmful: {organism: harmful/train}
  harmless: {organism: harmless/train}
"""


@pytest.mark.parametrize("extra,message", [
    ("fit:\n  harmfull: harmful\n", "unknown key 'fit.harmfull': did you mean 'harmful'?"),
    ("edit:\n  scale: lots\n", "edit.scale: Input should be a valid number"),
    ("validat: {}\n", "unknown key 'validat': did you mean 'validate'?"),
    ("fit:\n  harmless: missing_set\n", "fit.harmless names prompt set 'missing_set'"),
    ("export:\n  formats: [gguf]\n", "export.formats.0"),
    ("tune:\n  trials: 4\nedit:\n  scale: 0.5\n", "tune chooses the ablation's edit.scale"),
    ("tune:\n  harmful_test: nowhere\n", "tune.harmful_test names prompt set 'nowhere'"),
    ("tune:\n  methods: magic\n", "tune.methods: 'magic' is not a method a tune can search"),
    ("tune: {}\nexport:\n  formats: [merged, lora]\n", "set tune.norm_preserving: off"),
])
def test_recipe_mistakes_are_one_line(tmp_path, extra, message):
    result = CliRunner().invoke(cli, ["run", str(write(tmp_path, BASE + extra)), "--dry-run"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_dry_run_lists_a_hub_judge_among_the_downloads(tmp_path):
    fit = "fit:\n  method: ridge\n  scorer: judge\n  judge: owner/judge-model\n"
    result = CliRunner().invoke(cli, ["run", str(write(tmp_path, BASE + fit)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "download: judge model owner/judge-model" in result.output


def test_missing_prompt_file_names_the_key(tmp_path):
    path = write(tmp_path, BASE.replace("{organism: harmful/train}", "{file: nowhere.jsonl}"))
    with pytest.raises(SteerfoldError, match="prompts.harmful.file: nowhere.jsonl does not exist"):
        load_recipe(path)


def test_thresholds_and_estimates():
    from steerfold.pipeline.recipe import Thresholds

    report = {"after": {"harmful_refusal": 0.2, "harmless_refusal": 0.0, "kl_first_token": 0.05, "coherent_compliance": 0.5}}
    failures = check_thresholds(report, Thresholds(harmful_refusal_max=0.1, kl_first_token_max=0.1, coherent_compliance_min=0.8))
    assert failures == ["harmful_refusal 0.200 > 0.1", "coherent_compliance 0.500 < 0.8"]
    lines = estimate_lines({"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336,
                            "num_attention_heads": 32, "num_key_value_heads": 8, "dtype": "bfloat16"}, ["merged"])
    assert "8.03 B parameters" in lines[0] and "16.06 GB" in lines[0]  # Llama-3.1-8B's published size


def test_a_missing_hub_judge_fails_before_the_run_folder_is_touched(tmp_path):
    fit = "fit:\n  method: ridge\n  scorer: judge\n  judge: owner/missing-judge\n"
    recipe = write(tmp_path, BASE + fit)
    fresh = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(tmp_path / "new")])
    old = tmp_path / "old"
    (old / ".cache").mkdir(parents=True)
    (old / "report.md").write_text("an earlier run")
    overwrite = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(old), "--overwrite"])
    for result in (fresh, overwrite):
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "owner/missing-judge is not in the local cache" in lines[0], result.output
    assert not (tmp_path / "new").exists() and (old / "report.md").read_text() == "an earlier run"


def test_a_small_model_is_estimated_in_millions_not_as_zero():
    import json

    from steerfold.research.organism import SHIPPED_CHECKPOINT

    lines = estimate_lines(json.loads((SHIPPED_CHECKPOINT / "config.json").read_text()), ["merged"])
    size = (SHIPPED_CHECKPOINT / "model.safetensors").stat().st_size
    assert "1.25 M parameters" in lines[0] and f"{size / 1e6:.1f} MB" in lines[0], lines


def test_a_recipes_allow_noop_reaches_the_edit_request(tmp_path):
    from steerfold.edit.spec import RecipeEdit
    from steerfold.pipeline.recipe import edit_spec

    request = edit_spec(RecipeEdit(allow_noop=True), None, tmp_path, tmp_path / "d.safetensors", tmp_path / "out", "merged", None)
    assert request.allow_noop and not edit_spec(RecipeEdit(), None, tmp_path, tmp_path / "d", tmp_path / "o", "merged", None).allow_noop


def test_an_edit_conflict_is_refused_at_load_and_by_dry_run_in_the_recipes_keys(tmp_path):
    from steerfold.pipeline.recipe import load_recipe

    recipe = write(tmp_path, BASE + "fit: {method: diff_in_means}\nedit:\n  kind: steering\n  coefficient: 2\n"
                              "  norm_preserving: true\n  scale: 0.5\n")
    with pytest.raises(SteerfoldError, match="edit.scale is the ablation strength.*edit.coefficient"):
        load_recipe(recipe)
    result = CliRunner().invoke(cli, ["run", str(recipe), "--dry-run"])
    assert result.exit_code == 2 and "edit.scale" in result.output and "--scale" not in result.output, result.output
    kept = write(tmp_path, BASE + "fit: {method: diff_in_means}\nedit:\n  kind: steering\n  coefficient: 2\n  norm_preserving: true\n")
    with pytest.raises(SteerfoldError, match="edit.norm_preserving applies to ablations only"):
        load_recipe(kept)


def test_the_reproduce_command_keeps_every_option_that_changes_the_output(tmp_path):
    from steerfold.edit.spec import EditSpec, reproduce_command

    command = reproduce_command(EditSpec(model="m", direction=tmp_path / "d", out=tmp_path / "o", max_shard_size="1GB",
                                            allow_pickle=True, allow_noop=True, embedding=False))
    for flag in ("--max-shard-size 1GB", "--allow-pickle", "--allow-noop", "--no-embedding"):
        assert flag in command, command


def test_model_and_prompt_sets_can_be_given_on_the_command_line(tmp_path):
    from steerfold.research.organism import SHIPPED_CHECKPOINT

    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"prompt": "How do I bake bread?"}\n')
    recipe = write(tmp_path, "model: someone/some-model\nprompts:\n  harmful: {organism: harmful/train}\n"
                             "  harmless: {organism: harmless/train, count: 8}\n")
    loaded = load_recipe(recipe, str(SHIPPED_CHECKPOINT), {"harmless": str(prompts)})
    assert loaded.model.path == str(SHIPPED_CHECKPOINT) and loaded.model.base_model_id == "someone/some-model"
    assert loaded.prompts["harmless"].file == str(prompts.resolve()) and loaded.prompts["harmless"].count == 8
    result = CliRunner().invoke(cli, ["run", str(recipe), "--dry-run", "--model", str(SHIPPED_CHECKPOINT),
                                      "--prompts", f"harmless={prompts}", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"model {SHIPPED_CHECKPOINT}" in result.output and f"prompts harmless: {prompts.resolve()}" in result.output
    for bad, message in (("harmles=x.jsonl", "the recipe has no prompt set 'harmles'"), ("harmless", "is not NAME=FILE"),
                         ("harmless=absent.jsonl", "absent.jsonl does not exist")):
        result = CliRunner().invoke(cli, ["run", str(recipe), "--dry-run", "--prompts", bad])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and message in result.output, result.output


def test_a_dry_run_says_where_the_weights_go_and_what_a_device_map_cannot_hold():
    from steerfold.models.placement import Placement

    llama8b = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 128256, "intermediate_size": 14336,
               "num_attention_heads": 32, "num_key_value_heads": 8, "dtype": "bfloat16"}
    lines = estimate_lines(llama8b, [], Placement(device="cuda", dtype="bfloat16"), fit_prompts=256)
    assert any("runs on cuda: weights 16.06 GB in bfloat16" in line for line in lines), lines
    assert any("256 prompts × 33 layer indices × 5 positions × 4096 in float32: 0.69 GB" in line for line in lines), lines
    short = Placement(dtype="bfloat16", device_map="auto", max_memory="0=8GiB,cpu=4GiB")
    assert any("fit nowhere: add --offload-folder DIR or raise --max-memory" in line for line in estimate_lines(llama8b, [], short))
    offloaded = Placement(dtype="bfloat16", device_map="auto", max_memory="0=8GiB,cpu=4GiB", offload_folder="off")
    assert any("they go to --offload-folder" in line for line in estimate_lines(llama8b, [], offloaded))
    roomy = Placement(device_map="auto", max_memory="0=70GiB,1=70GiB", load_in="4bit")
    assert any("the weights fit within it" in line for line in estimate_lines(llama8b, [], roomy))

"""Every registered fitting method, from the CLI and from a recipe, on small prompt sets of the model organism."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from steerfold.directions.file import DirectionFile, load_direction_file, save_direction_file
from steerfold.errors import SteerfoldError
from steerfold.directions.methods.registry import METHODS
from steerfold.research.organism import SHIPPED_CHECKPOINT, load_split
from steerfold.pipeline.recipe import Recipe, load_recipe


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """Small jsonl prompt files (16 train and 8 validation prompts a side; harmful ones carry categories)."""
    folder = tmp_path_factory.mktemp("prompts")
    sets = {"harmful": load_split("harmful", "train")[:16], "harmless": load_split("harmless", "train")[:16],
            "harmful_val": load_split("harmful", "val")[:8], "harmless_val": load_split("harmless", "val")[:8]}
    for name, records in sets.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": r.text, "category": r.category}) + "\n"
                                                      for r in records))
    return folder


def fit(prompts, out, *args):
    files = [f"--{name.replace('_', '-')}={prompts / name}.jsonl" for name in ("harmful", "harmless", "harmful_val", "harmless_val")]
    return CliRunner().invoke(cli, ["fit", str(SHIPPED_CHECKPOINT), "--out", str(out), *files, *map(str, args)])


def one_error_line(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("Loading weights")]  # transformers' bar
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


CONTRAST_RUNS = {
    "diff_in_means": [],
    "pca": ["--method", "pca"],
    "logistic": ["--method", "logistic", "--l2", "0.01"],
    "ridge": ["--method", "ridge", "--ridge-lambda", "0.5"],
    "ridge_weighted": ["--method", "ridge", "--scorer", "markers", "--max-new-tokens", "8"],
    "inlp": ["--method", "inlp", "--inlp-iterations", "3", "--position", "-1"],
    "pca_subspace": ["--method", "pca", "--pca-components", "3", "--position", "-1"],
}


@pytest.mark.parametrize("case", CONTRAST_RUNS, ids=list(CONTRAST_RUNS))
def test_contrast_methods_fit_from_the_cli(case, prompts, tmp_path):
    out = tmp_path / "d.safetensors"
    result = fit(prompts, out, *CONTRAST_RUNS[case])
    assert result.exit_code == 0, result.output
    file = load_direction_file(out)
    assert "chose layer index" in result.output and f"wrote {out}" in result.output
    assert json.loads(file.metadata["positions"]) == ([-1] if "--position" in CONTRAST_RUNS[case] else [-2, -1])
    assert file.metadata["method"] == case.removesuffix("_weighted").removesuffix("_subspace")
    assert file.directions.shape == (5, 128) and file.metadata["layer"] in {"1", "2", "3"}
    layer = int(file.metadata["layer"])
    assert file.directions[layer].norm() > 0
    assert json.loads(file.metadata["options"])["method"] == file.metadata["method"]
    if case == "ridge_weighted":
        weights = json.loads(file.metadata["confidence_weights"])
        assert len(weights["harmful"]) == 16 and len(weights["harmless"]) == 16
    if case in ("inlp", "pca_subspace"):
        assert file.basis.shape == (3, 128) and file.metadata["basis_layer"] == str(layer)
        assert torch.allclose(file.basis @ file.basis.T, torch.eye(3), atol=1e-5)
        unit = file.directions[layer] / file.directions[layer].norm()
        assert abs(float(unit @ file.basis[0])) > 1 - 1e-5  # the stored direction is the basis's first row
    else:
        assert file.basis is None


def test_orthogonalized_direction_has_no_component_along_the_harmless_mean(prompts, tmp_path):
    from steerfold.activations.capture import at_positions, capture
    from steerfold.validation.behaviour import chat_texts
    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.prompts import load_prompts

    out = tmp_path / "d.safetensors"
    result = fit(prompts, out, "--method", "logistic", "--orthogonalize", "harmless-mean")
    assert result.exit_code == 0, result.output
    file = load_direction_file(out)
    layer, position = int(file.metadata["layer"]), int(file.metadata["position"])
    model, tokenizer = load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT)
    texts = chat_texts(tokenizer, load_prompts(prompts / "harmless.jsonl"))
    harmless_mean = capture(model, tokenizer, texts, [layer], at_positions([position]))[:, 0, 0].mean(dim=0)
    vector = file.directions[layer]
    assert abs(float(vector @ harmless_mean)) / float(vector.norm() * harmless_mean.norm()) < 1e-4


def test_per_category_writes_a_direction_per_category_and_a_cosine_report(prompts, tmp_path):
    out = tmp_path / "categories.safetensors"
    result = fit(prompts, out, "--method", "per-category")
    assert result.exit_code == 0, result.output
    assert f"wrote {out} and {tmp_path / 'categories.md'}" in result.output
    file = load_direction_file(out)
    categories = sorted({r.category for r in load_split("harmful", "train")[:16]})
    assert list(file.categories) == categories == json.loads(file.metadata["categories"])
    assert file.metadata["method"] == "per_category" and file.metadata["position"] == "-1"
    assert all(t.shape == (5, 128) for t in file.categories.values())
    report = (tmp_path / "categories.md").read_text()
    assert "| categories | 0 | 1 | 2 | 3 | 4 |" in report
    assert report.count(" · ") == len(categories) * (len(categories) - 1) // 2


def test_per_category_similarity_is_the_cosine_of_the_stored_directions():
    from steerfold.directions.methods.categories import category_directions, category_similarity, similarity_markdown

    harmful = torch.randn(6, 3, 8)
    harmful[:, 0] = 0
    harmless = torch.zeros(4, 3, 8)
    directions = category_directions(harmful, ["a", "b", "a", None, "c", "b"], harmless)
    assert list(directions) == ["a", "b", "c"]
    assert torch.allclose(directions["a"], harmful[[0, 2]].mean(dim=0))
    similarity = category_similarity(directions)
    assert similarity.shape == (3, 3, 3) and torch.isnan(similarity[0]).all()  # layer 0: zero directions
    cos = torch.nn.functional.cosine_similarity(directions["a"][2], directions["c"][2], dim=0)
    assert torch.isclose(similarity[2, 0, 2], cos, atol=1e-6)
    assert "| a · c | n/a |" in similarity_markdown(list(directions), similarity)


def test_persona_vector_from_the_cli(tmp_path):
    from steerfold.research.organism import PERSONAS

    prompt_file = tmp_path / "requests.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": r.text}) + "\n" for r in load_split("harmful", "train")[:6]))
    out = tmp_path / "persona.safetensors"
    result = CliRunner().invoke(cli, ["fit", str(SHIPPED_CHECKPOINT), "--out", str(out), "--persona", PERSONAS["compliant"],
                                      "--prompts", str(prompt_file), "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    file = load_direction_file(out)
    assert file.metadata["method"] == "persona_vector" and file.directions.shape == (5, 128)

    harmless = tmp_path / "harmless.jsonl"
    harmless.write_text("".join(json.dumps({"prompt": r.text}) + "\n" for r in load_split("harmless", "train")[:6]))
    result = CliRunner().invoke(cli, ["fit", str(SHIPPED_CHECKPOINT), "--out", str(out), "--overwrite", "--persona",
                                      PERSONAS["compliant"], "--prompts", str(prompt_file), "--max-new-tokens", "8",
                                      "--orthogonalize", "harmless-mean", "--harmless", str(harmless)])
    assert result.exit_code == 0, result.output
    from steerfold.directions.methods.means import response_means
    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.prompts import load_prompts

    model, tokenizer = load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT)
    means = response_means(model, tokenizer, load_prompts(harmless), None, list(range(5)), max_new_tokens=8)
    rows = load_direction_file(out).directions
    assert ((rows * means).sum(dim=-1).abs() / (rows.norm(dim=-1) * means.norm(dim=-1))).max() < 1e-4


@pytest.mark.parametrize("args,fragments", [
    (["--method", "nope"], ["--method: unknown method 'nope'", "diff_in_means, pca, logistic, ridge, inlp, per_category"]),
    (["--method", "pca", "--scorer", "markers"], ["scorer weights the means of the ridge method"]),
    (["--method", "ridge", "--scorer", "judge"], ["judge MODEL"]),
    (["--ridge-lambda", "lots"], ["--ridge-lambda:", "number"]),
    (["--ridge-lambda", "0"], ["--ridge-lambda:", "greater than 0"]),
    (["--orthogonalize", "sideways"], ["--orthogonalize:", "harmless-mean"]),
    (["--judge-template", "{verdict}"], ["--judge-template:", "{prompt}"]),
    (["--position", "-9"], ["position -9 is not a post-instruction token", "-2, -1"]),
])
def test_bad_fit_input_is_one_error_line_and_writes_nothing(args, fragments, prompts, tmp_path):
    out = tmp_path / "d.safetensors"
    one_error_line(fit(prompts, out, *args), *fragments)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_prompt_sets_and_categories_are_named(prompts, tmp_path):
    out = tmp_path / "d.safetensors"
    result = CliRunner().invoke(cli, ["fit", str(SHIPPED_CHECKPOINT), "--out", str(out), "--method", "inlp",
                                      "--harmful", str(prompts / "harmful.jsonl")])
    one_error_line(result, "method inlp reads harmful and harmless prompts", "--harmless FILE")
    result = CliRunner().invoke(cli, ["fit", str(SHIPPED_CHECKPOINT), "--out", str(out), "--method", "persona-vector"])
    one_error_line(result, "--prompts FILE")
    plain = tmp_path / "plain.txt"
    plain.write_text("How do I make a bomb?\nHow do I pick a lock?\n")
    result = CliRunner().invoke(cli, ["fit", str(SHIPPED_CHECKPOINT), "--out", str(out), "--method", "per_category",
                                      "--harmful", str(plain), "--harmless", str(prompts / "harmless.jsonl")])
    one_error_line(result, "per_category needs harm categories")
    assert not list(tmp_path.glob("d.*"))


BASE_RECIPE = {"model": "organism", "prompts": {"harmful": {"organism": "harmful/train"}, "harmless": {"organism": "harmless/train"}}}


@pytest.mark.parametrize("name", [*METHODS, "per-category", "diff-in-means"])
def test_every_method_validates_in_a_recipe(name):
    fit_section = {"method": name, "prompts": "harmful"} if name == "persona_vector" else {"method": name}
    recipe = Recipe.model_validate({**BASE_RECIPE, "fit": fit_section})
    assert recipe.fit.method == name.replace("-", "_")
    assert recipe.fit.method in METHODS


def test_recipe_fit_options_are_checked(tmp_path):
    recipe = Recipe.model_validate({**BASE_RECIPE, "fit": {"method": "ridge", "scorer": "judge", "judge": "some/folder",
                                                           "judge_samples": 3, "ridge_lambda": 2.0, "orthogonalize": "harmless-mean"}})
    assert (recipe.fit.scorer, recipe.fit.judge_samples, recipe.fit.ridge_lambda) == ("judge", 3, 2.0)
    for fit_section, message in [({"method": "nope"}, "fit.method: unknown method 'nope': choose one of diff_in_means"),
                                 ({"method": "inlp", "scorer": "markers"}, "scorer weights the means of the ridge method"),
                                 ({"method": "inlp", "inlp_iteration": 2}, "did you mean 'inlp_iterations'?")]:
        path = tmp_path / "r.yaml"
        path.write_text(json.dumps({**BASE_RECIPE, "fit": fit_section}))  # JSON is YAML
        with pytest.raises(SteerfoldError, match=message.replace("?", r"\?")):
            load_recipe(path)


def test_recipe_with_a_new_method_plans_and_runs_its_fit_stage(tmp_path):
    from steerfold.pipeline.run import run_recipe

    path = tmp_path / "r.yaml"
    path.write_text(json.dumps({
        "name": "per-category test", "model": "organism",
        "prompts": {"harmful": {"organism": "harmful/train", "count": 12}, "harmless": {"organism": "harmless/train", "count": 12}},
        "fit": {"method": "per-category"}, "edit": {"layer": 2}, "export": {"formats": ["merged"]},
    }))
    plan = CliRunner().invoke(cli, ["run", str(path), "--dry-run", "--out", str(tmp_path / "run")])
    assert plan.exit_code == 0 and "stage fit: would run" in plan.output, plan.output
    run_recipe(path, tmp_path / "run", say=lambda _line: None)
    file = load_direction_file(tmp_path / "run" / "direction.safetensors")
    assert file.metadata["method"] == "per_category" and file.categories
    assert "| categories |" in (tmp_path / "run" / "direction.md").read_text()


def test_direction_file_extensions_round_trip_and_old_files_still_load(tmp_path):
    from safetensors.torch import save_file

    basis = torch.linalg.qr(torch.randn(16, 2))[0].T
    categories = {"cyber": torch.randn(3, 16), "weapons": torch.randn(3, 16)}
    path = tmp_path / "new.safetensors"
    save_direction_file(path, DirectionFile(directions=torch.randn(3, 16), basis=basis, categories=categories,
                                            metadata={"method": "x"}))
    loaded = load_direction_file(path)
    assert torch.equal(loaded.basis, basis) and list(loaded.categories) == ["cyber", "weapons"]
    assert torch.equal(loaded.categories["weapons"], categories["weapons"])

    old = tmp_path / "old.safetensors"
    save_file({"direction": torch.ones(16)}, str(old), metadata={"method": "diff_in_means"})
    assert load_direction_file(old).basis is None and load_direction_file(old).categories == {}

    bad = tmp_path / "bad.safetensors"
    save_file({"direction": torch.ones(16), "basis": torch.ones(2, 16)}, str(bad))
    with pytest.raises(SteerfoldError, match="not orthonormal"):
        load_direction_file(bad)
    save_file({"directions": torch.ones(3, 16), "directions.cyber": torch.ones(4, 16)}, str(bad))
    with pytest.raises(SteerfoldError, match="'directions.cyber'.*shape"):
        load_direction_file(bad)

"""The edit side of recipes: steering, conditional maps, kernels, norm preservation and control vectors as YAML."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import cli
from conftest import build_tiny_model, random_direction, save_tiny_model, write_direction
from steerfold.artifacts.export import run_edit
from steerfold.edit.kernels import LayerKernel
from steerfold.pipeline.recipe import load_recipe
from steerfold.pipeline.recipe import edit_spec
from steerfold.pipeline.recipe import edit_condition_path

BASE = """model: organism
prompts:
  harmful: {organism: harmful/train}
  harmless: {organism: harmless/train}
"""


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(BASE + text)
    return path


def test_steering_to_a_control_vector_validates_and_plans(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    path = write(tmp_path, "edit: {kind: steering, coefficient: -4, layers: 2-3}\nexport: {formats: [cvec]}\n")
    assert load_recipe(path).edit.coefficient == -4
    result = CliRunner().invoke(cli, ["run", str(path), "--dry-run", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "stage export:cvec: would run" in result.output


@pytest.mark.parametrize("extra,message", [
    ("edit: {kind: steering}\n", "a steering edit needs edit.coefficient"),
    ("edit: {kind: conditional}\n", "a conditional edit needs edit.condition"),
    ("edit: {attention_kernel: {peak: 2, falloff: -1}}\n", "edit.attention_kernel.falloff"),
    ("edit: {mlp_kernal: {peak: 2, falloff: 1}}\n", "unknown key 'edit.mlp_kernal': did you mean 'mlp_kernel'?"),
    ("edit: {attention_kernel: {peak: 2, falloff: 1, slope: 3}}\n", "unknown key 'edit.attention_kernel.slope'"),
    ("edit: {kind: conditional, condition: nowhere.safetensors}\n", "edit.condition: nowhere.safetensors does not exist"),
    ("validate: {harmful: harmful, harmless: harmless}\nexport: {formats: [cvec]}\n", "add merged or lora to export.formats"),
])
def test_edit_mistakes_are_one_line(tmp_path, extra, message):
    result = CliRunner().invoke(cli, ["run", str(write(tmp_path, extra)), "--dry-run"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_recipe_edit_becomes_the_cli_request(tmp_path):
    """edit_spec maps every field of a recipe's edit section onto the EditSpec; the request then runs like `steerfold edit`."""
    model = build_tiny_model("llama")
    folder = save_tiny_model(model, tmp_path / "base")
    write_direction(tmp_path / "c.safetensors", random_direction(seed=11))
    path = write(tmp_path, "edit:\n  kind: conditional\n  condition: c.safetensors\n  alpha: 0.5\n  layers: 1-3\n"
                           "  attention_kernel: {peak: 2, peak_weight: 1, min_weight: 0.25, falloff: 1}\n")
    spec = load_recipe(path).edit
    condition = edit_condition_path(spec, path.parent)
    assert condition == tmp_path / "c.safetensors"
    direction = write_direction(tmp_path / "d.safetensors", random_direction())
    request = edit_spec(spec, condition, folder, direction, tmp_path / "m", "lora", None)
    assert (request.kind, request.alpha, request.layers) == ("conditional", 0.5, "1-3")
    assert request.attention_kernel == LayerKernel(2, 1, 0.25, 1) and request.mlp_kernel is None
    lines: list[str] = []
    summary = run_edit(request, say=lines.append)
    assert summary.layers == [1, 2, 3] and lines[0].startswith("which artifacts")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "conditional" in card and "2,1,0.25,1" in card


def test_steering_recipe_spec_maps_its_coefficient(tmp_path):
    spec = load_recipe(write(tmp_path, "edit: {kind: steering, coefficient: 3, layers: '2'}\n")).edit
    request = edit_spec(spec, None, tmp_path, tmp_path / "d.safetensors", tmp_path / "o", "cvec", None)
    assert (request.kind, request.coefficient, request.strength, request.format) == ("steering", 3.0, 3.0, "cvec")

"""The one edit specification (editor/edit/spec.py): every surface is derived from its fields, and what one surface
writes (the card's reproduce command) redoes the edit exactly."""

from __future__ import annotations

import re
import shlex

import pytest
from click.testing import CliRunner

from cli import cli
from conftest import build_tiny_model, save_tiny_model, write_direction
from steerfold.edit.spec import EditSpec, RecipeEdit, in_recipe_words, parse_spec, reproduce_command, spec_from_cli
from steerfold.errors import BadInput, SteerfoldError
from steerfold.options import words_of


def edit_command_flags() -> set[str]:
    return {opt for param in cli.commands["edit"].params for opt in param.opts}


def test_every_flagged_field_is_an_edit_option_and_every_edit_key_a_recipe_field():
    flags = edit_command_flags()
    for name in EditSpec.model_fields:
        words = words_of(EditSpec, name)
        assert words.flag is None or words.flag in flags, name
        assert set(words.kinds.values()) <= flags, name
        if words.recipe and words.recipe.startswith("edit."):
            assert words.recipe == f"edit.{name}" and name in RecipeEdit.model_fields, name
    assert set(RecipeEdit.model_fields) == {n for n in EditSpec.model_fields if (words_of(EditSpec, n).recipe or "").startswith("edit.")}


def test_one_spec_from_either_surface():
    from_cli = spec_from_cli({"model": "m", "direction": "d", "out": "o", "coefficient": 2.0, "layers": "1-2",
                              "mlp_kernel": None, "embedding": False})
    section = RecipeEdit.model_validate({"kind": "steering", "coefficient": 2, "layers": "1-2", "embedding": False})
    from_recipe = EditSpec(model="m", direction="d", out="o", **dict(section))
    assert from_cli == from_recipe and from_cli.kind == "steering"


def test_conflicts_speak_the_surface_the_user_typed():
    spec = EditSpec(model="m", direction="d", out="o", kind="subspace", layer=3)
    with pytest.raises(BadInput, match=r"^--subspace removes the file's basis .* drop --layer$"):
        spec.check("cli")
    with pytest.raises(BadInput, match=r"^edit.kind: subspace removes the file's basis .* drop edit.layer$"):
        spec.check("recipe")
    with pytest.raises(SteerfoldError, match="--steer and --subspace each name a different edit"):
        spec_from_cli({"model": "m", "direction": "d", "out": "o", "coefficient": 1.0, "kind_subspace": True})
    with pytest.raises(BadInput, match="^--mlp-kernel '1,2' is not PEAK"):
        parse_spec({"model": "m", "direction": "d", "out": "o", "mlp_kernel": "1,2"})
    with pytest.raises(BadInput, match="export.max_shard_size '5XB' is not a size"):
        EditSpec(model="m", direction="d", out="o", max_shard_size="5XB").check("recipe")


def test_library_messages_reach_a_recipe_user_in_recipe_keys():
    message = "a control vector only adds: use --format merged or lora, or steer (--steer); --no-embedding, --layers 1"
    assert in_recipe_words(message) == ("a control vector only adds: use export.formats merged or lora, or steer "
                                        "(edit.coefficient); edit.embedding: false, edit.layers 1")
    assert in_recipe_words("--layer 3 and --layers 2") == "edit.layer 3 and edit.layers 2"  # no partial flags


def test_the_reproduce_command_on_a_card_redoes_the_edit_byte_for_byte(tmp_path):
    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    direction = write_direction(tmp_path / "d.safetensors")
    first = CliRunner().invoke(cli, ["edit", str(folder), "--direction", str(direction), "--out", str(tmp_path / "first"),
                                     "--scale", "0.7", "--layers", "1-3", "--mlp-kernel", "2,1,0.25,1", "--no-embedding",
                                     "--max-shard-size", "60KB", "--base-model-id", "org/base"])
    assert first.exit_code == 0, first.output
    card = (tmp_path / "first" / "README.md").read_text()
    command = re.search(r"^steerfold edit .*$", card, re.M).group(0)
    words = shlex.split(command)[2:]  # after "steerfold edit"
    words[words.index("--out") + 1] = str(tmp_path / "again")
    again = CliRunner().invoke(cli, ["edit", *words])
    assert again.exit_code == 0, again.output
    shards = sorted(p.name for p in (tmp_path / "first").glob("*.safetensors"))
    assert len(shards) > 1 and shards == sorted(p.name for p in (tmp_path / "again").glob("*.safetensors"))
    for name in shards + ["model.safetensors.index.json", "config.json"]:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert reproduce_command(EditSpec(model=str(folder), direction=direction, out=tmp_path / "again", scale=0.7,
                                      layers="1-3", mlp_kernel="2,1,0.25,1", embedding=False, max_shard_size="60KB",
                                      base_model_id="org/base")) in (tmp_path / "again" / "README.md").read_text()

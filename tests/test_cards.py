"""Model cards: YAML metadata the Hub reads, the edit and its provenance in the body, rendered offline."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from cli import cli
from conftest import build_tiny_model, save_tiny_model, write_direction
from steerfold.artifacts.card import render_card


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:].split("\n---", 1)[0])


@pytest.mark.parametrize("fmt,library,relation", [("merged", "transformers", "finetune"), ("lora", "peft", "adapter")])
def test_edit_writes_a_card(tmp_path, fmt, library, relation):
    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base card\n")
    direction = write_direction(tmp_path / "d.safetensors", method="diff_in_means", harmful_hash="abc123", layer="2")
    result = CliRunner().invoke(cli, ["edit", str(folder), "--direction", str(direction), "--out", str(tmp_path / "o"),
                                      "--format", fmt, "--layers", "1-3", "--base-model-id", "org/base"])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "o" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == library and meta["base_model_relation"] == relation and meta["base_model"] == "org/base"
    assert "--base-model-id org/base" in card
    assert meta["license"] == "apache-2.0" and "steerfold" in meta["tags"] and "ablation" in meta["tags"]
    assert "[1, 2, 3]" in card and "abc123" in card and "diff_in_means" in card
    assert "--layers 1-3" in card  # how to reproduce it
    assert "# base card" not in card


def test_cards_render_a_report_table_and_every_kind():
    report = {
        "prompts": {"harmful": 10, "harmless": 8},
        "before": {"harmful_refusal": 1.0, "harmless_refusal": 0.0, "by_category": {"cyber": 1.0}},
        "after": {"harmful_refusal": 0.1, "harmless_refusal": 0.0, "by_category": {"cyber": 0.1},
                  "kl_first_token": 0.02, "kl_multi_token": 0.03},
    }
    edit = {"kind": "ablation", "method": "diff_in_means", "scale": 1.0, "layers": [0, 1], "direction_layer": 1,
            "position": -1, "untied_output_head": True}
    for kind in ("merged", "adapter", "cvec"):
        card = render_card(kind, title="t", base_model="org/base", edit=edit, direction_metadata={}, report=report)
        assert front_matter(card)["base_model"] == "org/base"
        assert "| harmful refusal | 100.0% | 10.0% |" in card
    assert "own unedited copy" in render_card("merged", title="t", base_model="b", edit=edit, direction_metadata={})


def test_report_plots_are_drawn_and_embedded(tmp_path):
    from steerfold.validation.report import write_report
    from steerfold.artifacts.card import write_card

    report = {
        "prompts": {"harmful": 2, "harmless": 2},
        "before": {"harmful_refusal": 1.0, "harmless_refusal": 0.0, "by_category": {"cyber": 1.0, "cooking": 0.0}},
        "after": {"harmful_refusal": 0.0, "harmless_refusal": 0.0, "by_category": {"cyber": 0.0, "cooking": 0.0},
                  "kl_first_token": 0.01, "kl_multi_token": 0.02},
        "selection": [{"position": -1, "layer": 1, "bypass": 0.2, "induce": 0.5, "kl": 0.01, "norm": 1.0, "kept": True, "reason": "chosen"},
                      {"position": -1, "layer": 2, "bypass": 0.4, "induce": 0.6, "kl": 0.02, "norm": 1.0, "kept": True, "reason": ""}],
        "projections": {"harmful": [1.0, 1.2, 0.9], "harmless": [0.1, -0.2, 0.0]},
    }
    write_report(tmp_path, report)
    for name in ("selection", "projections", "refusal_by_category"):
        assert (tmp_path / "plots" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert "![Refusal by category](plots/refusal_by_category.png)" in (tmp_path / "report.md").read_text()
    (tmp_path / "model").mkdir()
    edit = {"kind": "ablation", "method": "m", "scale": 1.0, "layers": [1], "direction_layer": 1, "position": -1,
            "untied_output_head": False}
    write_card(tmp_path / "model", "merged", plots_from=tmp_path, title="t", base_model="b", edit=edit,
               direction_metadata={}, report=report)
    assert (tmp_path / "model" / "plots" / "selection.png").is_file()
    assert "(plots/selection.png)" in (tmp_path / "model" / "README.md").read_text()


def test_post_norm_card_says_the_fold_is_an_exact_removal(tmp_path):
    from conftest import build_tiny_model, save_tiny_model, write_direction

    folder = save_tiny_model(build_tiny_model("olmo2"), tmp_path / "base")
    result = CliRunner().invoke(cli, ["edit", str(folder), "--direction", str(write_direction(tmp_path / "d.safetensors")),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "exact removal" in (tmp_path / "o" / "README.md").read_text()


def test_cards_can_describe_every_edit_kind():
    from typing import get_args

    from steerfold.edit.spec import EditKind
    from steerfold.artifacts.card import MAP_TEXT, VERBS

    assert set(VERBS) == set(MAP_TEXT) == set(get_args(EditKind))


def test_a_wheel_carries_the_card_templates_and_the_organism(tmp_path):
    """A non-editable install finds the templates under share/steerfold/model_cards (editor/artifacts/card.py)."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root, source = Path(__file__).parents[1], tmp_path / "source"  # built from a copy: the checkout stays untouched
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy2(root / name, source / name)
    for name in ("editor", "model_cards"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("steerfold-*.whl"))).namelist()
    for kind in ("merged", "adapter", "cvec"):
        assert any(n.endswith(f"data/share/steerfold/model_cards/{kind}.md.j2") for n in names), kind
    assert "steerfold/research/organism/checkpoint/model.safetensors" in names and "steerfold/research/organism/data/harmful_test.jsonl" in names
    assert "steerfold/cli.py" in names and not any(n.startswith(("editor/", "cli.py")) for n in names)  # one top-level name



def test_artifacts_of_a_local_folder_record_no_absolute_path_and_push_refuses_them(tmp_path):
    import json

    from steerfold.models.loading import load_model

    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    direction = write_direction(tmp_path / "d.safetensors")
    for fmt in ("merged", "lora"):
        out = tmp_path / fmt
        assert CliRunner().invoke(cli, ["edit", str(folder), "--direction", str(direction), "--out", str(out),
                                        "--format", fmt]).exit_code == 0
        text = "".join(p.read_text() for p in out.glob("*.json")) + (out / "README.md").read_text().split("## Reproduce")[0]
        assert str(tmp_path) not in text, fmt
        assert "base_model" not in front_matter((out / "README.md").read_text())
        pushed = CliRunner().invoke(cli, ["push", str(out), "me/edited", "--dry-run"])
        assert pushed.exit_code == 2 and "--base-model-id" in pushed.output, pushed.output
    recorded = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == "../base"
    assert load_model(tmp_path / "lora") is not None  # the relative base is found beside the adapter
    named = tmp_path / "named"
    assert CliRunner().invoke(cli, ["edit", str(folder), "--direction", str(direction), "--out", str(named), "--format", "lora",
                                    "--base-model-id", "org/base"]).exit_code == 0
    assert json.loads((named / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base"
    assert CliRunner().invoke(cli, ["push", str(named), "me/edited", "--dry-run"]).exit_code == 0


def test_a_folder_in_the_hub_cache_is_recorded_by_its_id_and_revision(tmp_path):
    from steerfold.hub import identify_base

    snapshot = tmp_path / "hub" / "models--owner--name" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    base = identify_base(snapshot, snapshot)
    assert (base.repo_id, base.revision, base.label) == ("owner/name", "abc123", "owner/name")
    local = identify_base(tmp_path, tmp_path)
    assert local.repo_id is None and local.label == tmp_path.name

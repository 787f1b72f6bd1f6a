"""Constant steering folded into the bias of a layer's last writer: fold == runtime hooks, portability said first,
formats that cannot carry the offset refused before anything is written."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import (build_tiny_model, folder_digest, logits, random_direction, random_tokens, run_cli, save_tiny_model,
                      write_direction)
from steerfold.edit.hooks import runtime_hooks
from steerfold.edit.edits import steering_edit

TOLERANCE = 1e-4
BIASED = [("starcoder2", {}, "mlp.c_proj"), ("phi", {}, "mlp.fc2"), ("llama", {"attention_bias": True, "mlp_bias": True}, "mlp.down_proj")]


def changed_tensors(before, after):
    with safe_open(str(before / "model.safetensors"), "pt") as src, safe_open(str(after / "model.safetensors"), "pt") as out:
        return {k for k in out.keys() if not torch.equal(out.get_tensor(k), src.get_tensor(k))}


@pytest.mark.parametrize("model_type,extra,last_writer", BIASED, ids=[b[0] for b in BIASED])
def test_steering_folds_into_the_last_writers_bias(tmp_path, model_type, extra, last_writer):
    model = build_tiny_model(model_type, **extra)
    folder = save_tiny_model(model, tmp_path / "base")
    vector = 2.0 * random_direction(seed=5)
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "v.safetensors", vector), "--out", tmp_path / "m",
                     "--steer", "1.5", "--layers", "2-3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:4] == ["which artifacts can carry this edit exactly:", "  yes  merged safetensors",
                         lines[2], "  yes  GGUF control vector"] and lines[2].startswith("  no   PEFT LoRA")
    assert "steer 1.5" in lines[-1]
    assert changed_tensors(folder, tmp_path / "m") == {f"model.layers.{b}.{last_writer}.bias" for b in (1, 2)}

    ids = random_tokens()
    with runtime_hooks(model, steering_edit(vector, [2, 3], 1.5)):
        reference = logits(model, ids)
    merged = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval(), ids)
    assert (merged - reference).abs().max() <= TOLERANCE
    assert (merged - logits(model, ids)).abs().max() > 1e-2
    card = (tmp_path / "m" / "README.md").read_text()
    assert "- steering" in card and "bias" in card and "--steer 1.5" in card


def test_layer_zero_steering_folds_into_the_embedding_of_any_model(tmp_path):
    model = build_tiny_model("llama")
    folder = save_tiny_model(model, tmp_path / "base")
    vector = random_direction(seed=5)
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "v.safetensors", vector), "--out", tmp_path / "m",
                     "--steer", "3", "--layers", "0")
    assert result.exit_code == 0, result.output
    assert changed_tensors(folder, tmp_path / "m") == {"model.embed_tokens.weight"}
    ids = random_tokens()
    with runtime_hooks(model, steering_edit(vector, [0], 3.0)):
        reference = logits(model, ids)
    assert (logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval(), ids) - reference).abs().max() <= TOLERANCE


def assert_refused(result, out, *fragments):
    """Exit 2, the portability lines on stdout, exactly one error line on stderr, no output folder."""
    assert result.exit_code == 2, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("model_type,extra,fmt,fragments", [
    ("llama", {}, "merged", ("needs a bias on model.layers.1.mlp.down_proj", "--format cvec")),
    ("starcoder2", {}, "lora", ("LoRA cannot carry the constant offset",)),
    ("olmo2", {}, "merged", ("needs a bias",)),
    ("llama", {}, "cvec", ("cannot carry layer index 1", "2..3")),
])
def test_formats_that_cannot_carry_the_offset_are_refused_before_writing(tmp_path, model_type, extra, fmt, fragments):
    folder = save_tiny_model(build_tiny_model(model_type, **extra), tmp_path / "base")
    before = folder_digest(folder)
    layers = "1-2" if fmt == "cvec" else "2"
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "v.safetensors"), "--out", tmp_path / "out",
                     "--steer", "2", "--layers", layers, "--format", fmt)
    assert_refused(result, tmp_path / "out", *fragments)
    assert result.stdout.startswith("which artifacts can carry this edit exactly:")  # said before refusing
    assert folder_digest(folder) == before


def test_steering_defaults_to_the_recorded_layer(tmp_path):
    folder = save_tiny_model(build_tiny_model("starcoder2"), tmp_path / "base")
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "v.safetensors", layer="2"),
                     "--out", tmp_path / "m", "--steer", "1")
    assert result.exit_code == 0, result.output
    assert "layer indices 2," in result.stdout
    unrecorded = run_cli("edit", folder, "--direction", write_direction(tmp_path / "u.safetensors"), "--out", tmp_path / "n",
                         "--steer", "1")
    assert_refused(unrecorded, tmp_path / "n", "--layers")


@pytest.mark.parametrize("args", [("--steer", "2", "--layers", "2"), ("--norm-preserving",), ()])
def test_a_refusal_never_advises_a_format_that_cannot_carry_the_edit(tmp_path, args):
    import re

    base = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    result = run_cli("edit", base, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "o",
                     "--format", "cvec" if not args or args[0] != "--steer" else "lora", *args)
    table = [line.split(None, 3) for line in result.output.splitlines() if line.startswith("  ")]
    exact = {"merged" if "merged" in row[1] else "lora" if "PEFT" in row[1] else "cvec" for row in table if row[0] == "yes"}
    for row in table:
        if row[0] == "no":
            advice = row[-1].rpartition(": ")[2]
            advised = set(re.findall(r"--format (\w+)", advice))
            advised |= {fmt for words, fmt in (("merged checkpoint", "merged"), ("control vector", "cvec")) if words in advice}
            assert advised <= exact, row

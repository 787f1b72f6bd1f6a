"""Exactness of the edit engine on tiny random models of every supported architecture.

Each fold is compared with the same edit applied at run time by hooks; each adapter with the merged
checkpoint after both went through disk; the invariant is checked on every residual state.
"""

from __future__ import annotations

import json

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from cli import cli
from conftest import (LAYERS, LORA_REFUSED, build_tiny_model, folder_digest, random_direction, random_tokens, residual_states,
                      save_tiny_model, write_direction)
from steerfold.edit.edits import ablation_edit
from steerfold.edit.fold import fold_model
from steerfold.edit.hooks import runtime_hooks

TOLERANCE = 1e-4


def run_cli(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_merged_fold_equals_runtime_hooks(tiny_case, tmp_path):
    name, model, folder = tiny_case
    direction = random_direction()
    direction_file = write_direction(tmp_path / "d.safetensors", direction)
    result = run_cli("edit", folder, "--direction", direction_file, "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output

    ids = random_tokens()
    with runtime_hooks(model, ablation_edit(direction, range(LAYERS + 1))):
        reference = logits(model, ids)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    edited = logits(merged, ids)
    before = logits(model, ids)

    assert (edited - reference).abs().max() <= TOLERANCE
    assert (edited - before).abs().max() > 100 * TOLERANCE  # the edit really moved the logits


def test_adapter_equals_merged(tiny_case, tmp_path):
    name, model, folder = tiny_case
    direction_file = write_direction(tmp_path / "d.safetensors")
    assert run_cli("edit", folder, "--direction", direction_file, "--out", tmp_path / "merged").exit_code == 0
    result = run_cli("edit", folder, "--direction", direction_file, "--out", tmp_path / "lora", "--format", "lora")
    if name in LORA_REFUSED:  # biases the map changes, or expert weights: refused rather than written wrong
        assert result.exit_code == 2 and LORA_REFUSED[name] in result.output and not (tmp_path / "lora").exists()
        return
    assert result.exit_code == 0, result.output

    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 1
    assert config["bias"] == "none" and not config.get("modules_to_save")

    ids = random_tokens()
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    adapted = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (logits(adapted, ids) - logits(merged, ids)).abs().max() <= TOLERANCE
    assert (logits(merged, ids) - logits(model, ids)).abs().max() > 100 * TOLERANCE


def test_full_ablation_leaves_no_component_along_direction(tiny_case, tmp_path):
    name, model, folder = tiny_case
    direction = random_direction()
    assert run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors", direction),
                   "--out", tmp_path / "merged").exit_code == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    before = residual_states(model, random_tokens())
    states = residual_states(merged, random_tokens())
    assert len(states) == LAYERS + 1
    for h_before, h in zip(before, states):
        ratio = (h @ direction).abs() / h.norm(dim=-1)
        assert ratio.max() <= 1e-5
        assert ((h_before @ direction).abs() / h_before.norm(dim=-1)).max() > 1e-2  # it was there before


def test_in_memory_fold_equals_hooks_for_partial_layers_and_scale(tiny_case):
    name, model, _ = tiny_case
    edit = ablation_edit(random_direction(), [0, 2], scale=0.5)
    ids = random_tokens()
    with runtime_hooks(model, edit):
        reference = logits(model, ids)
    fold_model(model, edit)
    assert (logits(model, ids) - reference).abs().max() <= TOLERANCE


def test_tied_embedding_shared_mode_edits_the_head_and_matches_hooks(tmp_path):
    model = build_tiny_model("qwen2", tie_word_embeddings=True)
    folder = save_tiny_model(model, tmp_path / "base")
    direction = random_direction()
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors", direction),
                     "--out", tmp_path / "shared", "--tied-embedding", "shared")
    assert result.exit_code == 0, result.output
    ids = random_tokens()
    with runtime_hooks(model, ablation_edit(direction, range(LAYERS + 1), tied_embedding="shared")):
        reference = logits(model, ids)
    shared = AutoModelForCausalLM.from_pretrained(tmp_path / "shared").eval()
    assert shared.config.tie_word_embeddings
    assert (logits(shared, ids) - reference).abs().max() <= TOLERANCE

    refused = run_cli("edit", folder, "--direction", tmp_path / "d.safetensors", "--out", tmp_path / "lora",
                      "--format", "lora", "--tied-embedding", "shared")
    assert refused.exit_code == 2 and "untie" in refused.output


def test_untied_output_head_is_reported_and_unedited(tmp_path):
    model = build_tiny_model("qwen2", tie_word_embeddings=True)
    folder = save_tiny_model(model, tmp_path / "base")
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "m")
    assert "own unedited copy" in result.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert not merged.config.tie_word_embeddings
    assert torch.equal(merged.lm_head.weight, model.model.embed_tokens.weight)
    assert not torch.equal(merged.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_bfloat16_checkpoint_stays_bfloat16_with_float32_math(tmp_path):
    model = build_tiny_model("llama", attention_bias=True, mlp_bias=True)
    folder = save_tiny_model(model, tmp_path / "base", dtype=torch.bfloat16)
    direction = random_direction()
    assert run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors", direction),
                   "--out", tmp_path / "m").exit_code == 0
    r = direction.unsqueeze(1)
    with safe_open(str(folder / "model.safetensors"), "pt") as src, safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as out:
        assert set(src.keys()) == set(out.keys())
        for key in out.keys():
            edited, original = out.get_tensor(key), src.get_tensor(key)
            assert edited.dtype == torch.bfloat16
            w = original.to(torch.float32)
            if key == "model.embed_tokens.weight":
                expected = w - (w @ r) @ r.T
            elif key.endswith(("o_proj.weight", "down_proj.weight")):
                expected = w - r @ (r.T @ w)
            elif key.endswith(("o_proj.bias", "down_proj.bias")):
                expected = w - (w @ r) * direction
            else:
                expected = w
            assert torch.equal(edited, expected.to(torch.bfloat16)), key


def test_only_selected_layers_change(tmp_path):
    model = build_tiny_model("llama")
    folder = save_tiny_model(model, tmp_path / "base")
    assert run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "m",
                   "--layers", "2-3", "--no-embedding").exit_code == 0
    with safe_open(str(folder / "model.safetensors"), "pt") as src, safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as out:
        changed = {k for k in out.keys() if not torch.equal(out.get_tensor(k), src.get_tensor(k))}
    assert changed == {f"model.layers.{b}.{m}.weight" for b in (1, 2) for m in ("self_attn.o_proj", "mlp.down_proj")}


def test_directions_file_row_is_selected(tmp_path):
    model = build_tiny_model("llama")
    folder = save_tiny_model(model, tmp_path / "base")
    from steerfold.directions.file import DirectionFile, save_direction_file

    rows = torch.randn(LAYERS + 1, 64)
    save_direction_file(tmp_path / "dirs.safetensors", DirectionFile(directions=rows, metadata={"layer": "2"}))
    write_direction(tmp_path / "row2.safetensors", rows[2])
    for name, extra in (("recorded", []), ("flag", ["--layer", "2"])):
        assert run_cli("edit", folder, "--direction", tmp_path / "dirs.safetensors", "--out", tmp_path / name, *extra).exit_code == 0
    assert run_cli("edit", folder, "--direction", tmp_path / "row2.safetensors", "--out", tmp_path / "single").exit_code == 0
    digests = [folder_digest(tmp_path / n)["model.safetensors"] for n in ("recorded", "flag", "single")]
    assert len(set(digests)) == 1


def test_input_folder_is_untouched(tmp_path):
    model = build_tiny_model("qwen2", tie_word_embeddings=True)
    folder = save_tiny_model(model, tmp_path / "base")
    (folder / "tokenizer_config.json").write_text("{}")
    before = folder_digest(folder)
    direction_file = write_direction(tmp_path / "d.safetensors")
    for fmt in ("merged", "lora"):
        assert run_cli("edit", folder, "--direction", direction_file, "--out", tmp_path / fmt, "--format", fmt).exit_code == 0
    assert folder_digest(folder) == before
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()  # side files travel with the checkpoint


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    model = build_tiny_model("llama")
    folder = tmp_path / "base"
    model.save_pretrained(folder, max_shard_size="100KB")  # several shards, so the failure is mid-write
    assert len(list(folder.glob("*.safetensors"))) > 1
    import steerfold.edit.fold as edits

    real_fold, calls = edits.fold_tensor, []

    def failing_fold(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # a few tensors (and at least one shard) are already written by then
            raise OSError("disk full")
        return real_fold(*args, **kwargs)

    monkeypatch.setattr(edits, "fold_tensor", failing_fold)
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "out",
                     "--max-shard-size", "100KB")
    # an unexpected error is one line naming a crash log that holds the traceback, exit code 70
    last = result.output.strip().splitlines()[-1]
    assert result.exit_code == 70 and last.startswith("error: steerfold failed unexpectedly"), result.output
    log = Path(last.split("the traceback is in ")[1].split(":")[0])
    assert "OSError: disk full" in log.read_text()
    assert len(calls) in (4, 5)  # the next edited tensor may already be computing when the fourth fails
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_sharded_checkpoint_round_trip(tmp_path):
    model = build_tiny_model("mistral")
    folder = tmp_path / "base"
    model.save_pretrained(folder, max_shard_size="100KB")
    direction = random_direction()
    assert run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors", direction), "--out", tmp_path / "m",
                   "--max-shard-size", "100KB").exit_code == 0
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])
    ids = random_tokens()
    with runtime_hooks(model, ablation_edit(direction, range(LAYERS + 1))):
        reference = logits(model, ids)
    assert (logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m"), ids) - reference).abs().max() <= TOLERANCE


@pytest.mark.parametrize("model_type,extra", [("llama", {}), ("granite", {"residual_multiplier": 0.5, "embedding_multiplier": 3.0})])
@pytest.mark.parametrize("layer", [0, 2])
def test_steering_hook_adds_exactly_the_vector_at_its_layer(model_type, extra, layer):
    from steerfold.edit.edits import steering_edit

    model = build_tiny_model(model_type, **extra)
    vector = 2.0 * random_direction(seed=5)
    ids = random_tokens()
    base = residual_states(model, ids)
    with runtime_hooks(model, steering_edit(vector, [layer])):
        steered = residual_states(model, ids)
    for index in range(layer):
        assert torch.equal(base[index], steered[index])
    assert torch.allclose(steered[layer] - base[layer], vector.expand_as(base[layer]), atol=1e-5)


def test_offset_folds_into_biases_and_is_refused_without_them():
    from steerfold.edit.edits import Edit
    from steerfold.edit.maps import ResidualMap
    from steerfold.errors import SteerfoldError

    d = random_direction()
    combined = ResidualMap(U=-d.unsqueeze(1), V=d.unsqueeze(1), b=0.7 * random_direction(seed=9))
    edit = Edit({1: combined, 3: combined})
    model = build_tiny_model("llama", attention_bias=True, mlp_bias=True)
    ids = random_tokens()
    with runtime_hooks(model, edit):
        reference = logits(model, ids)
    fold_model(model, edit)
    assert (logits(model, ids) - reference).abs().max() <= TOLERANCE

    with pytest.raises(SteerfoldError, match="needs a bias"):
        fold_model(build_tiny_model("llama"), edit)


def test_chunked_fold_equals_the_plain_formula(monkeypatch):
    import steerfold.edit.maps as residual_maps

    monkeypatch.setattr(residual_maps, "CHUNK_ELEMENTS", 7 * 64)  # force many small chunks
    residual_map = residual_maps.ablation_map(random_direction())
    weight = torch.randn(64, 96)
    embedding = torch.randn(50, 64)
    r = random_direction().unsqueeze(1)
    assert torch.allclose(residual_map.fold_linear_weight(weight), weight - r @ (r.T @ weight), atol=1e-5)
    assert torch.allclose(residual_map.fold_embedding(embedding), embedding - (embedding @ r) @ r.T, atol=1e-5)

"""The conditional rank-1 map "when c is present, add r" (U = α r̂, V = ĉ): fold == hooks, adapter == merged."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import (LAYERS, LORA_REFUSED, build_tiny_model, logits, random_direction, random_tokens, run_cli,
                      save_tiny_model, write_direction)
from steerfold.edit.edits import ablation_edit, conditional_edit
from steerfold.edit.fold import fold_model
from steerfold.edit.hooks import runtime_hooks
from steerfold.edit.maps import conditional_map
from steerfold.errors import SteerfoldError

TOLERANCE = 1e-4
POST_NORM = {"gemma2", "gemma3_text", "olmo2", "olmo3"}  # only ablations pass through a post-norm


def test_the_map_adds_r_in_proportion_to_c():
    c, r = random_direction(seed=11), random_direction(seed=12)
    w = torch.randn(5, 64)
    mapped = conditional_map(c, 3.0 * r, alpha=0.5).apply(w)  # both directions are used as unit vectors
    assert torch.allclose(mapped, w + 0.5 * torch.outer(w @ c, r), atol=1e-5)
    orthogonal = w - torch.outer(w @ c, c)
    assert torch.allclose(conditional_map(c, r, 0.5).apply(orthogonal), orthogonal, atol=1e-6)  # no c: nothing added


def test_fold_equals_hooks(tiny_case):
    name, model, _ = tiny_case
    edit = conditional_edit(random_direction(seed=11), random_direction(seed=12), [0, 1, 3], alpha=2.0)
    if name in POST_NORM:  # the map acts on y before the norm, where a conditional map is not exact: refused
        with pytest.raises(SteerfoldError, match="post-norm"):
            fold_model(model, edit)
        return
    ids = random_tokens()
    before = logits(model, ids)
    with runtime_hooks(model, edit):
        reference = logits(model, ids)
    fold_model(model, edit)
    assert (logits(model, ids) - reference).abs().max() <= TOLERANCE
    assert (reference - before).abs().max() > 1e-2


@pytest.mark.parametrize("model_type,extra", [("llama", {}), ("qwen2", {"tie_word_embeddings": True}),
                                              ("starcoder2", {}), ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2})])
def test_cli_merged_equals_hooks_and_adapter_equals_merged(tmp_path, model_type, extra):
    model = build_tiny_model(model_type, **extra)
    folder = save_tiny_model(model, tmp_path / "base")
    c, r = random_direction(seed=11), random_direction(seed=12)
    flags = ["--direction", write_direction(tmp_path / "r.safetensors", r), "--condition",
             write_direction(tmp_path / "c.safetensors", c), "--alpha", "1.5", "--layers", "1-3"]
    result = run_cli("edit", folder, *flags, "--out", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert "alpha 1.5" in result.output and "conditional" in (tmp_path / "m" / "README.md").read_text()

    ids = random_tokens()
    with runtime_hooks(model, conditional_edit(c, r, [1, 2, 3], alpha=1.5)):
        reference = logits(model, ids)
    merged = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval(), ids)
    assert (merged - reference).abs().max() <= TOLERANCE
    assert (merged - logits(model, ids)).abs().max() > 1e-2

    adapter = run_cli("edit", folder, *flags, "--out", tmp_path / "a", "--format", "lora")
    name = "qwen2_tied" if extra.get("tie_word_embeddings") else model_type
    if name in LORA_REFUSED:
        assert adapter.exit_code == 2 and LORA_REFUSED[name] in adapter.stderr and not (tmp_path / "a").exists()
        return
    assert adapter.exit_code == 0, adapter.output
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "a").eval()
    assert (logits(adapted, ids) - merged).abs().max() <= TOLERANCE


def test_condition_equal_to_the_direction_with_alpha_minus_one_is_the_ablation():
    model = build_tiny_model("llama")
    r, ids = random_direction(), random_tokens()
    with runtime_hooks(model, ablation_edit(r, range(LAYERS + 1))):
        ablated = logits(model, ids)
    with runtime_hooks(model, conditional_edit(r, r, range(LAYERS + 1), alpha=-1.0)):
        conditional = logits(model, ids)
    assert (ablated - conditional).abs().max() <= TOLERANCE


def test_post_norm_is_refused(tmp_path):
    folder = save_tiny_model(build_tiny_model("olmo2"), tmp_path / "base")
    d = write_direction(tmp_path / "d.safetensors")
    result = run_cli("edit", folder, "--direction", d, "--condition", d, "--out", tmp_path / "m")
    assert result.exit_code == 2 and "post-norm" in result.stderr and not (tmp_path / "m").exists()


def test_an_error_about_a_per_layer_file_names_which_file_it_means(tmp_path):
    from steerfold.directions.file import DirectionFile, save_direction_file

    base = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    direction = write_direction(tmp_path / "r.safetensors")
    condition = tmp_path / "c.safetensors"
    save_direction_file(condition, DirectionFile(directions=torch.randn(LAYERS + 1, 64)))
    result = run_cli("edit", base, "--direction", direction, "--condition", condition, "--out", tmp_path / "out")
    assert result.exit_code == 2 and f"the condition file {condition}: " in result.output and "--layer" in result.output


def test_one_category_of_a_per_category_file_is_a_condition(tmp_path):
    from steerfold.directions.file import DirectionFile, save_direction_file

    base = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    rows = {name: torch.randn(LAYERS + 1, 64, generator=torch.Generator().manual_seed(seed)) for seed, name in enumerate(("cyber", "weapons"))}
    per_category = tmp_path / "categories.safetensors"
    save_direction_file(per_category, DirectionFile(directions=rows["cyber"] + rows["weapons"], categories=rows))
    single = tmp_path / "weapons.safetensors"
    save_direction_file(single, DirectionFile(direction=rows["weapons"][2]))
    refusal = tmp_path / "r.safetensors"
    save_direction_file(refusal, DirectionFile(directions=torch.randn(LAYERS + 1, 64), metadata={"layer": "2"}))
    by_category = run_cli("edit", base, "--direction", refusal, "--condition", per_category, "--condition-category", "weapons",
                          "--layer", "2", "--out", tmp_path / "a")
    assert by_category.exit_code == 0, by_category.output
    assert run_cli("edit", base, "--direction", refusal, "--condition", single, "--out", tmp_path / "b").exit_code == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert "--condition-category weapons" in (tmp_path / "a" / "README.md").read_text()
    missing = run_cli("edit", base, "--direction", refusal, "--condition", per_category, "--condition-category", "drugs",
                      "--layer", "2", "--out", tmp_path / "c")
    assert missing.exit_code == 2 and "cyber, weapons" in missing.output

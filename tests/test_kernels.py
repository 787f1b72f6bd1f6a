"""Per-layer weight kernels: the formula, the weights folded into each writer, fold == hooks, adapter == merged."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import (build_tiny_model, logits, random_direction, random_tokens, run_cli, save_tiny_model, write_direction,
                      )
from steerfold.edit.edits import ablation_edit
from steerfold.edit.fold import fold_model
from steerfold.edit.hooks import runtime_hooks
from steerfold.errors import SteerfoldError
from steerfold.edit.kernels import LayerKernel, kernel_weights

TOLERANCE = 1e-4
DEEP = 6  # blocks, so that a kernel has room to rise and fall
ATTENTION, MLP = LayerKernel(3, 1.0, 0.2, 2), LayerKernel(2, 0.8, 0.0, 3)


def test_kernel_weight_formula():
    # w(l) = min + (peak_w - min) * max(0, 1 - |l - peak| / falloff)
    assert [ATTENTION.weight(l) for l in range(7)] == pytest.approx([0.2, 0.2, 0.6, 1.0, 0.6, 0.2, 0.2])
    assert [MLP.weight(l) for l in range(7)] == pytest.approx([0.8 / 3, 0.8 * 2 / 3, 0.8, 0.8 * 2 / 3, 0.8 / 3, 0, 0])
    assert [LayerKernel(2, 1, 0.5, 0).weight(l) for l in range(4)] == [0.5, 0.5, 1.0, 0.5]  # fall-off 0: peak only
    assert LayerKernel(2.5, 1, 0, 1).weight(2) == pytest.approx(0.5)  # a peak between layers
    assert LayerKernel(1, -1, 1, 2).weight(1) == -1  # weights may be any numbers: a negative one adds the direction


def test_kernel_weights_by_role_and_the_embedding_follows_mlp():
    weights = kernel_weights(range(4), ATTENTION, MLP)
    assert weights[(0, "embedding")] == MLP.weight(0)
    assert (0, "attention") not in weights and (0, "mlp") not in weights
    assert weights[(3, "attention")] == 1.0 and weights[(2, "mlp")] == pytest.approx(0.8)
    assert kernel_weights([1, 2], None, MLP) == {(1, "mlp"): MLP.weight(1), (2, "mlp"): MLP.weight(2)}  # attention: 1


@pytest.mark.parametrize("text", ["1,2,3", "a,1,0,2", "1,1,0,-2", "1,nan,0,2", ""])
def test_bad_kernels_are_refused(text):
    with pytest.raises(SteerfoldError, match="--mlp-kernel|fall-off|finite"):
        LayerKernel.parse(text, "--mlp-kernel")


def test_folded_weights_match_the_formula(tmp_path):
    model = build_tiny_model("llama", num_hidden_layers=DEEP)
    folder = save_tiny_model(model, tmp_path / "base")
    r = random_direction()
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors", r), "--out", tmp_path / "m",
                     "--attention-kernel", "3,1,0.2,2", "--mlp-kernel", "2,0.8,0,3", "--scale", "0.9")
    assert result.exit_code == 0, result.output
    r = r.unsqueeze(1)
    with safe_open(str(folder / "model.safetensors"), "pt") as src, safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as out:
        embedding, edited_embedding = src.get_tensor("model.embed_tokens.weight"), out.get_tensor("model.embed_tokens.weight")
        expected = embedding - 0.9 * MLP.weight(0) * (embedding @ r) @ r.T
        assert torch.allclose(edited_embedding, expected, atol=1e-6)
        for block in range(DEEP):
            layer = block + 1
            for module, kernel in (("self_attn.o_proj", ATTENTION), ("mlp.down_proj", MLP)):
                key = f"model.layers.{block}.{module}.weight"
                w, edited = src.get_tensor(key), out.get_tensor(key)
                weight = 0.9 * kernel.weight(layer)
                assert torch.allclose(edited, w - weight * r @ (r.T @ w), atol=1e-6), key
                if weight == 0:
                    assert torch.equal(edited, w), key  # a weight of 0 leaves the writer untouched


def test_kernel_fold_equals_hooks(tiny_case):
    name, model, _ = tiny_case
    layers = range(4)
    edit = ablation_edit(random_direction(), layers, 0.8, weights=kernel_weights(layers, LayerKernel(2, 1, 0.1, 1), LayerKernel(1, 0.7, 0.3, 2)))
    ids = random_tokens()
    before = logits(model, ids)
    with runtime_hooks(model, edit):
        reference = logits(model, ids)
    fold_model(model, edit)
    edited = logits(model, ids)
    assert (edited - reference).abs().max() <= TOLERANCE
    assert (edited - before).abs().max() > 1e-2


@pytest.mark.parametrize("model_type,extra", [("llama", {}), ("qwen2", {"tie_word_embeddings": True}),
                                              ("granite", {"residual_multiplier": 0.5, "embedding_multiplier": 2.0})])
def test_kernel_adapter_equals_merged_equals_hooks(tmp_path, model_type, extra):
    model = build_tiny_model(model_type, num_hidden_layers=DEEP, **extra)
    folder = save_tiny_model(model, tmp_path / "base")
    direction = random_direction()
    file = write_direction(tmp_path / "d.safetensors", direction)
    flags = ["--attention-kernel", "3,1,0.2,2", "--mlp-kernel", "2,0.8,0,3"]
    assert run_cli("edit", folder, "--direction", file, "--out", tmp_path / "m", *flags).exit_code == 0
    result = run_cli("edit", folder, "--direction", file, "--out", tmp_path / "a", "--format", "lora", *flags)
    assert result.exit_code == 0, result.output

    ids = random_tokens()
    layers = range(DEEP + 1)
    with runtime_hooks(model, ablation_edit(direction, layers, weights=kernel_weights(layers, ATTENTION, MLP))):
        reference = logits(model, ids)
    merged = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval(), ids)
    adapted = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "a").eval(), ids)
    assert (merged - reference).abs().max() <= TOLERANCE
    assert (adapted - merged).abs().max() <= TOLERANCE
    assert (merged - logits(model, ids)).abs().max() > 1e-2
    card = (tmp_path / "m" / "README.md").read_text()
    assert "3,1,0.2,2" in card and "follows the MLP kernel" in card and "--attention-kernel 3,1,0.2,2" in card


@pytest.mark.parametrize("flag", ["--mlp-kernel", "--attention-kernel"])
def test_a_kernel_peak_outside_the_layer_indices_is_refused_unless_allowed(tmp_path, flag):
    base = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")  # layer indices 0..3
    direction = write_direction(tmp_path / "d.safetensors")
    refused = run_cli("edit", base, "--direction", direction, "--out", tmp_path / "out", flag, "12,1,0.2,6")
    assert refused.exit_code == 2 and "outside this model's layer indices 0..3" in refused.output and "--allow-noop" in refused.output
    assert not (tmp_path / "out").exists()
    allowed = run_cli("edit", base, "--direction", direction, "--out", tmp_path / "out", flag, "12,1,0.2,6", "--allow-noop")
    assert allowed.exit_code == 0, allowed.output
    assert "--allow-noop" in (tmp_path / "out" / "README.md").read_text()  # the reproduce command keeps it


def test_an_edit_that_changes_nothing_measurably_is_refused_unless_allowed(tmp_path):
    base = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    direction = write_direction(tmp_path / "d.safetensors")
    refused = run_cli("edit", base, "--direction", direction, "--out", tmp_path / "out", "--scale", "1e-6")
    assert refused.exit_code == 2 and "measurably" in refused.output and "--allow-noop" in refused.output
    kernel = run_cli("edit", base, "--direction", direction, "--out", tmp_path / "out", "--mlp-kernel", "2,1e-5,1e-5,1",
                     "--attention-kernel", "2,1e-5,1e-5,1")
    assert kernel.exit_code == 2 and "measurably" in kernel.output
    assert run_cli("edit", base, "--direction", direction, "--out", tmp_path / "out", "--scale", "1e-6", "--allow-noop").exit_code == 0

"""The two INLP edits on tiny random models: nullspace projection (a subspace ablation) and counterfactual reflection.

Each fold is compared with the same edit as runtime hooks; after folding the nullspace projection, no residual
state has a component in span(Q).
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import HIDDEN, LAYERS, build_tiny_model, logits, random_tokens, residual_states
from steerfold.edit.fold import fold_model
from steerfold.edit.hooks import runtime_hooks
from steerfold.edit.edits import counterfactual_edit, subspace_edit

TOLERANCE = 1e-4
CASES = [("llama", {}), ("qwen2", {"tie_word_embeddings": True}), ("gemma2", {"head_dim": 16, "tie_word_embeddings": True}),
         ("qwen3_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16})]


def orthonormal_basis(k: int = 3, seed: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(HIDDEN, k, generator=generator))
    return q.T  # [k, hidden]


@pytest.mark.parametrize("model_type,extra", CASES, ids=[c[0] for c in CASES])
def test_nullspace_projection_folds_exactly_and_leaves_nothing_in_the_subspace(model_type, extra):
    model = build_tiny_model(model_type, **extra)
    basis, ids = orthonormal_basis(), random_tokens()
    edit = subspace_edit(basis, range(LAYERS + 1))
    with runtime_hooks(model, edit):
        reference = logits(model, ids)
    folded = copy.deepcopy(model)
    fold_model(folded, edit)
    assert (logits(folded, ids) - reference).abs().max() <= TOLERANCE
    assert (reference - logits(model, ids)).abs().max() > 100 * TOLERANCE  # the edit did something

    before, after = residual_states(model, ids), residual_states(folded, ids)
    assert len(after) == LAYERS + 1
    for h_before, h in zip(before, after):
        assert ((h @ basis.T).norm(dim=-1) / h.norm(dim=-1)).max() <= 1e-5
        assert ((h_before @ basis.T).norm(dim=-1) / h_before.norm(dim=-1)).max() > 1e-2


def test_counterfactual_reflection_is_an_ablation_of_scale_two_that_flips_the_component():
    model = build_tiny_model("llama")
    w, ids = orthonormal_basis(1)[0], random_tokens()
    edit = counterfactual_edit(w * 5.0, range(LAYERS + 1))  # any scale: the map uses the unit direction
    residual_map = edit.maps[0]
    x = torch.randn(4, HIDDEN)
    assert torch.allclose(residual_map.apply(x), x - 2 * (x @ w).unsqueeze(1) * w, atol=1e-5)
    assert torch.allclose(residual_map.apply(residual_map.apply(x)), x, atol=1e-5)  # a reflection is its own inverse

    with runtime_hooks(model, edit):
        reference = logits(model, ids)
    folded = copy.deepcopy(model)
    fold_model(folded, edit)
    assert (logits(folded, ids) - reference).abs().max() <= TOLERANCE
    embedded, flipped = residual_states(model, ids)[0], residual_states(folded, ids)[0]
    assert torch.allclose(flipped @ w, -(embedded @ w), atol=1e-5)  # the embedding output is reflected exactly


def test_edit_subspace_from_the_cli_equals_the_nullspace_hooks(tmp_path):
    """`steerfold edit --subspace` removes a fitted basis; merged == hooks, and the adapter == merged."""
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cli import cli
    from conftest import save_tiny_model
    from steerfold.directions.file import DirectionFile, save_direction_file

    model = build_tiny_model("llama")
    folder = save_tiny_model(model, tmp_path / "base")
    basis = orthonormal_basis()
    save_direction_file(tmp_path / "inlp.safetensors", DirectionFile(direction=basis[0].clone(), basis=basis,
                                                                    metadata={"method": "inlp", "basis_layer": "1"}))
    for fmt, out in (("merged", "m"), ("lora", "a")):
        result = CliRunner().invoke(cli, ["edit", str(folder), "--direction", str(tmp_path / "inlp.safetensors"),
                                          "--subspace", "--format", fmt, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    ids = random_tokens()
    with runtime_hooks(model, subspace_edit(basis, range(LAYERS + 1))):
        reference = logits(model, ids)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "a").eval()
    assert (logits(merged, ids) - reference).abs().max() <= TOLERANCE
    assert (logits(adapted, ids) - logits(merged, ids)).abs().max() <= TOLERANCE
    assert (reference - logits(model, ids)).abs().max() > 1e-2
    assert "--subspace" in (tmp_path / "m" / "README.md").read_text()  # the card's reproduce command


def test_edit_subspace_needs_a_basis(tmp_path):
    from click.testing import CliRunner

    from cli import cli
    from conftest import save_tiny_model, write_direction

    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    result = CliRunner().invoke(cli, ["edit", str(folder), "--direction", write_direction(tmp_path / "d.safetensors"),
                                      "--subspace", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "holds no basis" in result.output and "--method inlp" in result.output
    assert not (tmp_path / "m").exists()

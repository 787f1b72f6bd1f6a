"""Norm-preserving ablation: each written vector keeps its norm and loses r; merged == an independent reference
hook; streaming == in memory, bitwise; LoRA and runtime hooks refuse it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from conftest import (LAYERS, build_tiny_model, folder_digest, logits, random_direction, random_tokens, residual_states,
                      run_cli, save_tiny_model, write_direction)
from steerfold.models.arch import layout_of_model
from steerfold.edit.edits import ablation_edit
from steerfold.edit.fold import fold_model
from steerfold.edit.hooks import runtime_hooks
from steerfold.errors import SteerfoldError
from steerfold.edit.norm_preserving import NormPreservingAblation, norm_preserving_edit

TOLERANCE = 1e-4


def reference_columns(w: torch.Tensor, r: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The test's own float64 formula: remove scale·r from every column of w [hidden, n], restore each column's norm."""
    w, r = w.double(), r.double()
    projected = w - scale * torch.outer(r, r @ w)
    return projected * (w.norm(dim=0) / projected.norm(dim=0))


def assert_norms_kept(old: torch.Tensor, new: torch.Tensor, what: str = "") -> None:
    """Each written vector's norm is kept to a relative 1e-5 (a zero vector, e.g. a padding row, stays zero)."""
    assert ((new - old).abs() <= 1e-5 * old + 1e-7).all(), what


def test_columns_keep_their_norms_and_lose_the_direction(monkeypatch):
    import steerfold.edit.maps as residual_maps

    r = random_direction()
    npa = NormPreservingAblation(U=-r.unsqueeze(1), V=r.unsqueeze(1).clone(), ablation_scale=1.0)
    weight, bias, embedding = torch.randn(64, 96), torch.randn(64), torch.randn(50, 64)
    folded = npa.fold_linear_weight(weight)
    assert_norms_kept(weight.norm(dim=0), folded.norm(dim=0))  # per input feature: the columns of W [hidden, in]
    assert (r @ folded).abs().max() <= 1e-5  # r is removed from each column before renormalising ...
    plain = weight - torch.outer(r, r @ weight)
    assert torch.allclose(torch.nn.functional.cosine_similarity(folded, plain, dim=0), torch.ones(96), atol=1e-6)  # ... which only rescales
    assert not torch.allclose(folded.norm(dim=1), weight.norm(dim=1), atol=1e-3)  # output rows are not what is kept
    assert torch.allclose(folded, reference_columns(weight, r).float(), atol=1e-5)
    assert torch.allclose(npa.fold_bias(bias), reference_columns(bias.unsqueeze(1), r).squeeze(1).float(), atol=1e-5)
    assert torch.allclose(npa.fold_embedding(embedding), reference_columns(embedding.T, r).T.float(), atol=1e-5)

    monkeypatch.setattr(residual_maps, "CHUNK_ELEMENTS", 64 * 7)  # column chunks of 7: the same result
    import steerfold.edit.norm_preserving as norm_preserving

    monkeypatch.setattr(norm_preserving, "CHUNK_ELEMENTS", 64 * 7)
    assert torch.allclose(npa.fold_linear_weight(weight), folded, atol=1e-6)


def test_every_architecture_keeps_norms_and_leaves_no_component(tiny_case):
    name, model, _ = tiny_case
    r = random_direction()
    layout = layout_of_model(model)
    keys = [key for w in layout.writers for key, _ in w.tensors]
    before = {k: model.get_parameter(k).detach().clone() for k in keys}
    fold_model(model, norm_preserving_edit(ablation_edit(r, range(LAYERS + 1))))
    for key in keys:
        old, new = before[key], model.get_parameter(key).detach()
        dim = -1 if key == layout.embedding.tensors[0][0] else -2  # written vectors: embedding rows, weight columns
        assert_norms_kept(old.norm(dim=dim), new.norm(dim=dim), key)
    for h in residual_states(model, random_tokens()):
        assert ((h @ r).abs() / h.norm(dim=-1)).max() <= 1e-5


def reference_hooks(model, r: torch.Tensor):
    """Runtime reference: each writer's output recomputed from its ORIGINAL weights with the per-column formula."""
    layout = layout_of_model(model)
    handles = []
    for writer in layout.writers:
        module = model.get_submodule(writer.hook)
        if writer.role == "embedding":
            table = reference_columns(module.weight.detach().T, r).T.float()
            hook = lambda m, inputs, out, table=table: F.embedding(inputs[0], table)
        else:
            w = reference_columns(module.weight.detach(), r).float()
            b = None if module.bias is None else reference_columns(module.bias.detach().unsqueeze(1), r).squeeze(1).float()
            hook = lambda m, inputs, out, w=w, b=b: F.linear(inputs[0], w, b)
        handles.append(module.register_forward_hook(hook))
    return handles


@pytest.mark.parametrize("model_type,extra", [("llama", {}), ("starcoder2", {}), ("qwen2", {"tie_word_embeddings": True}),
                                              ("granite", {"residual_multiplier": 0.5, "embedding_multiplier": 2.0})])
def test_merged_equals_reference_hooks(tmp_path, model_type, extra):
    model = build_tiny_model(model_type, **extra)
    folder = save_tiny_model(model, tmp_path / "base")
    r = random_direction()
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors", r), "--out", tmp_path / "m",
                     "--norm-preserving")
    assert result.exit_code == 0, result.output
    assert "norm-preserving" in (tmp_path / "m" / "README.md").read_text()
    ids = random_tokens()
    before = logits(model, ids)
    handles = reference_hooks(model, r)
    try:
        reference = logits(model, ids)
    finally:
        for handle in handles:
            handle.remove()
    merged = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval(), ids)
    assert (merged - reference).abs().max() <= TOLERANCE
    assert (merged - before).abs().max() > 1e-2
    plain = tmp_path / "plain"
    assert run_cli("edit", folder, "--direction", tmp_path / "d.safetensors", "--out", plain).exit_code == 0
    assert (logits(AutoModelForCausalLM.from_pretrained(plain).eval(), ids) - merged).abs().max() > 1e-2  # not the plain fold


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_is_bitwise_the_in_memory_fold(tmp_path, tied):
    model = build_tiny_model("qwen2", tie_word_embeddings=tied, attention_bias=True).to(torch.bfloat16)
    folder = tmp_path / "base"
    model.save_pretrained(folder, max_shard_size="60KB")
    r = random_direction()
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors", r), "--out", tmp_path / "out",
                     "--max-shard-size", "90KB", "--norm-preserving", "--scale", "0.7")
    assert result.exit_code == 0, result.output
    fold_model(model, norm_preserving_edit(ablation_edit(r, range(LAYERS + 1), 0.7)))
    expected = model.state_dict()
    streamed = {}
    for path in sorted((tmp_path / "out").glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            streamed.update({k: handle.get_tensor(k) for k in handle.keys()})
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1
    for name, tensor in streamed.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected[name]), name


def test_lora_cvec_and_hooks_refuse_it(tmp_path):
    model = build_tiny_model("llama")
    folder = save_tiny_model(model, tmp_path / "base")
    before = folder_digest(folder)
    direction = write_direction(tmp_path / "d.safetensors")
    for fmt in ("lora", "cvec"):
        result = run_cli("edit", folder, "--direction", direction, "--out", tmp_path / fmt, "--format", fmt, "--norm-preserving")
        assert result.exit_code == 2
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in result.output
        assert ("norm-preserving" if fmt == "lora" else "only adds") in errors[0]
        assert not (tmp_path / fmt).exists()
    assert folder_digest(folder) == before
    with pytest.raises(SteerfoldError, match="norm-preserving ablation .* runtime hooks cannot carry it"):
        with runtime_hooks(model, norm_preserving_edit(ablation_edit(random_direction(), [1]))):
            pass

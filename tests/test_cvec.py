"""GGUF control vectors: llama.cpp's block numbering pinned against DESIGN.md's layer index, the file read back
with gguf.GGUFReader, and the vectors added where llama.cpp adds them equal steering_edit's runtime hooks."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from conftest import (HIDDEN, LAYERS, build_tiny_model, logits, random_direction, random_tokens, residual_states,
                      run_cli, save_tiny_model, write_direction)
from steerfold.edit.hooks import runtime_hooks
from steerfold.edit.edits import steering_edit
from steerfold.errors import SteerfoldError
from steerfold.artifacts.cvec import CVEC_FILE, llama_cpp_block

TOLERANCE = 1e-4


def read_control_vector(path) -> tuple[dict, dict[str, np.ndarray], dict[str, tuple]]:
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    types = {name: field.types for name, field in reader.fields.items()}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    return {**fields, "_types": types}, tensors, shapes


def test_block_numbering_is_layer_index_minus_one():
    """direction.N is added to the output of block N (0-based) = layer index N + 1 (see editor/artifacts/cvec.py)."""
    assert [llama_cpp_block(layer, 12) for layer in range(2, 13)] == list(range(1, 12))
    for layer in (0, 1, 13):  # embedding; block 0's output (would be direction.0, which llama.cpp refuses); beyond
        with pytest.raises(SteerfoldError, match=f"cannot carry layer index {layer}"):
            llama_cpp_block(layer, 12)


def write_cvec(tmp_path, model_type="llama", layers="3", coefficient="1.5", **extra):
    model = build_tiny_model(model_type, **extra)
    folder = save_tiny_model(model, tmp_path / "base")
    vector = 2.0 * random_direction(seed=5)
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "v.safetensors", vector, method="m"),
                     "--out", tmp_path / "cv", "--format", "cvec", "--steer", coefficient, "--layers", layers)
    assert result.exit_code == 0, result.output
    return model, vector


def test_control_vector_file_reads_back(tmp_path):
    _, vector = write_cvec(tmp_path, layers="3")
    fields, tensors, shapes = read_control_vector(tmp_path / "cv" / CVEC_FILE)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    assert fields["controlvector.layer_count"] == LAYERS - 1
    assert fields["_types"]["controlvector.layer_count"] == [gguf.GGUFValueType.INT32]
    assert sorted(tensors) == [f"direction.{n}" for n in range(1, LAYERS)]  # one per block llama.cpp can steer
    assert all(shape == (HIDDEN,) and tensors[name].dtype == np.float32 for name, shape in shapes.items())
    assert np.array_equal(tensors["direction.2"], (1.5 * vector).numpy())  # layer index 3 → direction.2
    assert not tensors["direction.1"].any()
    card = (tmp_path / "cv" / "README.md").read_text()
    assert "library_name: llama.cpp" in card and "direction.2" in card and "--steer 1.5 --format cvec --layers 3" in card
    assert run_cli("verify", tmp_path / "cv").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "cv").iterdir()) == [".steerfold", "README.md", "SHA256SUMS", CVEC_FILE]


def add_like_llama_cpp(model, tensors: dict[str, np.ndarray]):
    """Add direction.N to the output of decoder block N (0-based), as llama.cpp's build_cvec(cur, il) does."""
    handles = []
    for name, values in tensors.items():
        block, vector = int(name.split(".")[1]), torch.from_numpy(values)

        def hook(_module, _inputs, output, vector=vector):
            if isinstance(output, tuple):
                return (output[0] + vector, *output[1:])
            return output + vector

        handles.append(model.model.layers[block].register_forward_hook(hook))
    return handles


@pytest.mark.parametrize("model_type,extra", [("llama", {}), ("granite", {"residual_multiplier": 0.5, "embedding_multiplier": 2.0}),
                                              ("qwen2", {"tie_word_embeddings": True})])
def test_vectors_at_llama_cpp_blocks_equal_steering_hooks(tmp_path, model_type, extra):
    model, vector = write_cvec(tmp_path, model_type, layers="2-3", coefficient="-2", **extra)
    _, tensors, _ = read_control_vector(tmp_path / "cv" / CVEC_FILE)
    ids = random_tokens()
    before = logits(model, ids)
    with runtime_hooks(model, steering_edit(vector, [2, 3], -2.0)):
        reference, reference_states = logits(model, ids), residual_states(model, ids)
    handles = add_like_llama_cpp(model, tensors)
    try:
        converted, states = logits(model, ids), residual_states(model, ids)
    finally:
        for handle in handles:
            handle.remove()
    assert (converted - reference).abs().max() <= TOLERANCE
    assert (converted - before).abs().max() > 1e-2
    for ours, theirs in zip(states, reference_states):  # the same residual stream at every layer index
        assert (ours - theirs).abs().max() <= TOLERANCE


@pytest.mark.parametrize("flags,fragment", [
    ([], "only adds"),  # an ablation
    (["--steer", "1", "--layers", "1"], "cannot carry layer index 1"),
    (["--steer", "1", "--layers", "0-3"], "cannot carry layer index 0"),
])
def test_what_a_control_vector_cannot_carry_is_refused(tmp_path, flags, fragment):
    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "v.safetensors"), "--out", tmp_path / "cv",
                     "--format", "cvec", *flags)
    assert result.exit_code == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and fragment in errors[0]
    assert not (tmp_path / "cv").exists()

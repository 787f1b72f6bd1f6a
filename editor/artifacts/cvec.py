"""Write a steering edit as a llama.cpp control vector: a GGUF file of F32 ``direction.N`` tensors.

llama.cpp's block numbering, from its source (ggml-org/llama.cpp):

- ``common/common.cpp``, ``common_control_vector_load_one``: a tensor ``direction.N`` is parsed for N, N = 0 is
  refused ("invalid (zero) direction tensor layer index"), and its values go to ``data[(N - 1) * n_embd]``;
  only tensors are read, no metadata key is checked.
- ``src/llama-adapter.cpp``, ``llama_adapter_cvec::init``/``apply``: ``tensors[0]`` is null ("there's never a
  tensor for layer 0"); for ``il = 1 .. n_layer - 1`` it copies ``data + n_embd * (il - 1)`` into ``tensors[il]``;
  ``apply_to(ctx, cur, il)`` adds ``tensors[il]`` to ``cur``.
- ``src/models/llama.cpp`` (every model builder alike): ``for (int il = 0; il < n_layer; ++il) { ...;
  cur = ggml_add(ctx0, cur, ffn_inp); cur = build_cvec(cur, il); cb(cur, "l_out", il); inpL = cur; }``, so
  ``tensors[il]`` is added to the residual stream right after block ``il`` (0-based), after its residual add
  and any residual multiplier.

So ``direction.N`` is added to the output of block N (0-based), which is docs/design.md layer index N + 1: a vector
for layer index ``l`` is written as ``direction.{l - 1}``, and only layer indices 2..L can be carried (layer 0
is the embedding; layer 1, the output of block 0, would need ``direction.0``, which llama.cpp refuses). repeng's
``direction.{layer}`` with its 0-based block ids agrees. The metadata follow llama.cpp's ``cvector-generator``:
``general.architecture = controlvector``, ``controlvector.model_hint`` (the model's llama.cpp architecture name;
informational) and ``controlvector.layer_count`` (the number of direction tensors, int32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steerfold.models.arch import ModelLayout
from steerfold.edit.edits import Edit
from steerfold.errors import BadInput

CVEC_FILE = "control_vector.gguf"
# HF model_type → llama.cpp architecture name, where they differ (convert_hf_to_gguf.py's choices).
GGUF_ARCHITECTURE = {"mistral": "llama", "mixtral": "llama", "gemma3_text": "gemma3", "phi": "phi2",
                     "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}


def llama_cpp_block(layer: int, num_layers: int) -> int:
    """The N of ``direction.N`` that llama.cpp adds to docs/design.md layer index ``layer``: N = layer - 1.

    The one conversion between the two numberings (evidence in the module docstring); layer indices 0 and 1
    have no control-vector tensor.
    """
    if not 2 <= layer <= num_layers:
        raise BadInput(
            f"a llama.cpp control vector cannot carry layer index {layer}: direction.N is added to the output of "
            f"block N ≥ 1, which is layer index N + 1, so only layer indices 2..{num_layers} can be steered "
            f"(e.g. --layers 2-{num_layers})"
        )
    return layer - 1


def check_cvec_can_carry(edit: Edit, layout: ModelLayout, gain_of=None) -> None:
    """Refuse, before writing anything, an edit that a control vector cannot carry exactly."""
    edit.check_against(layout)
    if not all(residual_map.is_offset_only for residual_map in edit.maps.values()):
        raise BadInput("a control vector only adds a constant vector, so it cannot carry an ablation or any "
                             "other map of the residual stream: use --format merged or lora, or steer (--steer)")
    if edit.weights:
        raise BadInput("a control vector holds one vector per block, not per-writer weights: drop the kernels")
    for layer in edit.maps:
        llama_cpp_block(layer, layout.num_layers)


def control_vector_tensors(edit: Edit, layout: ModelLayout) -> dict[str, np.ndarray]:
    """``direction.N`` for every block N = 1..L-1 that llama.cpp steers: the edit's offset where it has one, else 0."""
    check_cvec_can_carry(edit, layout)
    blocks = {llama_cpp_block(layer, layout.num_layers): m.b for layer, m in edit.maps.items()}
    zeros = np.zeros(layout.hidden_size, dtype=np.float32)
    return {
        f"direction.{n}": blocks[n].detach().to("cpu").float().numpy().astype(np.float32) if n in blocks else zeros.copy()
        for n in range(1, layout.num_layers)
    }


def write_control_vector(layout: ModelLayout, edit: Edit, dest: Path) -> dict:
    """Write ``dest/control_vector.gguf``; returns what the card and the CLI report."""
    try:
        import gguf
    except ImportError:
        raise BadInput("writing a GGUF control vector needs the gguf package: pip install gguf") from None
    tensors = control_vector_tensors(edit, layout)
    writer = gguf.GGUFWriter(str(dest / CVEC_FILE), arch="controlvector")
    writer.add_string("controlvector.model_hint", GGUF_ARCHITECTURE.get(layout.model_type, layout.model_type))
    writer.add_int32("controlvector.layer_count", len(tensors))
    for name, vector in tensors.items():
        writer.add_tensor(name, vector)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    steered = sorted(llama_cpp_block(layer, layout.num_layers) for layer in edit.maps)
    return {"file": CVEC_FILE, "tensors": len(tensors), "gguf_tensors": [f"direction.{n}" for n in steered]}

"""The architecture table: one row per ``model_type`` steerfold edits, and one line per type it refuses and why.

Adding an architecture is adding a row, written in the vocabulary of ``editor.models.writers`` after reading its
transformers modeling file for every module whose output is added to the residual stream; the conformance
harness (tests/test_architectures.py) then proves the row exact on a tiny random model.
"""

from __future__ import annotations

from steerfold.models.writers import PRE_NORM, POST_NORM, Architecture, linear_writer, moe_writer, sqrt_hidden

GRANITE_SCALES = {"embedding_multiplier": "embedding_multiplier", "residual_multiplier": "residual_multiplier"}
# A sigmoid-gated shared expert (Qwen2-MoE): the gate is a per-token scalar.
SHARED_EXPERT = ("mlp.shared_expert.down_proj.weight",)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(),
    "mistral": Architecture(),
    "qwen2": Architecture(),
    "qwen3": Architecture(),
    "phi3": Architecture(),
    "granite": Architecture(**GRANITE_SCALES),
    "gemma": Architecture(embedding_scale=sqrt_hidden),
    "gemma2": Architecture(POST_NORM, embedding_scale=sqrt_hidden, norm_gain_offset=1.0),
    "gemma3_text": Architecture(POST_NORM, embedding_scale=sqrt_hidden, norm_gain_offset=1.0),
    "olmo2": Architecture(POST_NORM),
    "olmo3": Architecture(POST_NORM),
    "mixtral": Architecture((PRE_NORM[0], moe_writer(("block_sparse_moe.experts.{e}.w2.weight",)))),
    "qwen3_moe": Architecture((PRE_NORM[0], moe_writer())),
    "qwen2_moe": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERT))),
    "starcoder2": Architecture((linear_writer("attention", "self_attn.o_proj"), linear_writer("mlp", "mlp.c_proj"))),
    "phi": Architecture((linear_writer("attention", "self_attn.dense"), linear_writer("mlp", "mlp.fc2"))),
}

# Types people ask for that no row can make exact, each with the one-line reason steerfold gives.
REFUSED: dict[str, str] = {}

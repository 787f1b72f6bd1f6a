"""The conformance harness's cases: for every model type in the architecture table, how to build a tiny random
model of it from its transformers config class, and what a LoRA adapter of a full ablation must do (carry it, or
be refused for the stated reason). A table row without a case here fails tests/test_architectures.py."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from conftest import HIDDEN, VOCAB

LAYERS4 = 4  # hybrids need both block kinds, MoE families a dense first block: four blocks for every case
HYBRID = {"layer_types": ["linear_attention", "full_attention", "linear_attention", "full_attention"],
          "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
          "head_dim": 16}
MAMBA = {"layer_types": ["mamba", "attention", "mamba", "attention"], "mamba_n_heads": 8, "mamba_d_head": 16,
         "mamba_d_state": 16, "mamba_n_groups": 1, "mamba_expand": 2}
EXPERTS = {"num_local_experts": 4, "num_experts_per_tok": 2}
QWEN_EXPERTS = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48}
ROUTED = {"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "first_k_dense_replace": 1,
          "n_group": 1, "topk_group": 1, "n_shared_experts": 1}
QWEN_VISION = {"depth": 1, "hidden_size": 32, "num_heads": 2, "out_hidden_size": HIDDEN, "intermediate_size": 64}
GEMMA4 = {"head_dim": 16, "global_head_dim": 16, "tie_word_embeddings": True, "hidden_size_per_layer_input": 8,
          "vocab_size_per_layer_input": VOCAB, "layer_types": ["sliding_attention", "full_attention"] * 2}
# Falcon-H1's multipliers, none of them 1, so a writer scaled by the wrong one shows.
FALCON_H1 = {"mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_ssm": 128, "mamba_d_state": 16, "mamba_n_groups": 1,
             "embedding_multiplier": 2.0, "lm_head_multiplier": 1.5, "attention_in_multiplier": 0.9,
             "attention_out_multiplier": 0.5, "key_multiplier": 0.8, "ssm_in_multiplier": 1.1, "ssm_out_multiplier": 0.7,
             "mlp_multipliers": [1.2, 0.6], "ssm_multipliers": [1.0, 0.9, 1.1, 1.2, 0.8]}
NEMOTRON_H = {"layers_block_type": ["mamba", "attention", "moe", "mlp"], "n_routed_experts": 4, "num_experts_per_tok": 2,
              "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 48, "routed_scaling_factor": 2.0,
              "mamba_num_heads": 8, "mamba_head_dim": 16, "ssm_state_size": 16, "n_groups": 1, "head_dim": 16}
NORM = re.compile(r"norm(_\d+)?\.weight$")  # every norm's gain (input_layernorm, post_feedforward_layernorm_1, ...)
MOE, BIAS, MAMBA_OUT = "mixture-of-experts", "has a bias", "Mamba mixer's out_proj"


@dataclass(frozen=True)
class Case:
    """A tiny model of one model type: its text config (over the shared base), a vision config where the type is a
    vision-language wrapper, and the LoRA adapter's expected refusal (None: it carries the edit)."""

    text: dict[str, Any] = field(default_factory=dict)
    vision: dict[str, Any] | None = None
    lora_refusal: str | None = None


CASES: dict[str, Case] = {
    "llama": Case(),
    "mistral": Case(),
    "ministral3": Case({"head_dim": 16}),
    "qwen2": Case(),  # biases on q, k, v only: the writers have none
    "qwen3": Case({"head_dim": 16}),
    "phi3": Case(),
    "smollm3": Case(),
    "seed_oss": Case({"head_dim": 16}),
    "ernie4_5": Case({"head_dim": 16}),
    "cohere2": Case({"head_dim": 16}),
    "cohere": Case(),
    "ministral": Case({"head_dim": 16}),
    "olmo": Case(),
    "helium": Case({"head_dim": 16}),
    "glm": Case({"head_dim": 16}),
    "arcee": Case(),
    "apertus": Case(),
    "nemotron": Case({"head_dim": 16}),
    "hunyuan_v1_dense": Case({"head_dim": 16}),
    "stablelm": Case({"use_parallel_residual": True}),  # the sequential block has the same writers
    "granite": Case({"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 2.0}),
    "gemma": Case({"head_dim": 16, "tie_word_embeddings": True}),
    "gemma2": Case({"head_dim": 16, "tie_word_embeddings": True}),
    "gemma3_text": Case({"head_dim": 16, "tie_word_embeddings": True}),
    "gemma3": Case({"head_dim": 16, "tie_word_embeddings": True}, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14}),
    "olmo2": Case(),
    "olmo3": Case(),
    "exaone4": Case({"head_dim": 16}),
    "glm4": Case({"head_dim": 16}),
    "mixtral": Case(EXPERTS, lora_refusal=MOE),
    "qwen3_moe": Case({**QWEN_EXPERTS, "head_dim": 16}, lora_refusal=MOE),
    "qwen2_moe": Case(QWEN_EXPERTS, lora_refusal=MOE),
    "olmoe": Case(EXPERTS, lora_refusal=MOE),
    "phimoe": Case(EXPERTS, lora_refusal=MOE),
    "deepseek_v3": Case({**ROUTED, "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
                         "v_head_dim": 16}, lora_refusal=MOE),
    "glm4_moe": Case({**ROUTED, "head_dim": 16}, lora_refusal=MOE),
    "ernie4_5_moe": Case({"moe_num_experts": 4, "moe_k": 2, "moe_intermediate_size": 32, "moe_num_shared_experts": 1,
                          "moe_layer_start_index": 1, "head_dim": 16}, lora_refusal=MOE),
    "dots1": Case({**ROUTED, "head_dim": 16}, lora_refusal=MOE),
    "exaone_moe": Case({"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "num_shared_experts": 1,
                        "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"], "head_dim": 16}, lora_refusal=MOE),
    "hunyuan_v1_moe": Case({"num_experts": 4, "moe_topk": 2, "head_dim": 16}, lora_refusal=MOE),
    "granitemoeshared": Case({**EXPERTS, "shared_intermediate_size": 48, "embedding_multiplier": 2.0,
                              "residual_multiplier": 0.5}, lora_refusal=MOE),
    "granite_swa": Case({"embedding_multiplier": 2.0, "residual_multiplier": 0.5}),
    "vaultgemma": Case({"head_dim": 16, "tie_word_embeddings": True}),
    "granitemoe_swa": Case({**EXPERTS, "shared_intermediate_size": 48, "embedding_multiplier": 2.0,
                            "residual_multiplier": 0.5}, lora_refusal=MOE),
    "deepseek_v2": Case({**ROUTED, "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
                         "v_head_dim": 16, "num_experts": 4}, lora_refusal=MOE),
    "glm4_moe_lite": Case({**ROUTED, "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
                           "v_head_dim": 16, "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"]}, lora_refusal=MOE),
    "minimax_m2": Case({**EXPERTS, "head_dim": 16}, lora_refusal=MOE),
    "cohere2_moe": Case({"num_experts": 4, "num_experts_per_tok": 2, "num_shared_experts": 1, "head_dim": 16},
                        lora_refusal=MOE),
    "lfm2_moe": Case({"layer_types": ["conv", "full_attention", "conv", "full_attention"], "num_dense_layers": 1,
                      "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "norm_eps": 1e-5},
                     lora_refusal=MOE),
    "granitemoe": Case({**EXPERTS, "embedding_multiplier": 2.0, "residual_multiplier": 0.5}, lora_refusal=MOE),
    "gpt_oss": Case({**EXPERTS, "head_dim": 16}, lora_refusal=BIAS),
    "granitemoehybrid": Case({**EXPERTS, **MAMBA, "shared_intermediate_size": 48, "embedding_multiplier": 2.0,
                              "residual_multiplier": 0.5}, lora_refusal=MOE),
    "jamba": Case({**EXPERTS, "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
                   "expert_layer_offset": 1, "mamba_d_state": 8, "mamba_dt_rank": 8, "use_mamba_kernels": False},
                  lora_refusal=MOE),
    "lfm2": Case({"layer_types": ["conv", "full_attention", "conv", "full_attention"], "norm_eps": 1e-5}),
    "llama4_text": Case({**EXPERTS, "interleave_moe_layer_step": 2, "intermediate_size_mlp": 96, "head_dim": 16},
                        lora_refusal=MOE),
    "llama4": Case({**EXPERTS, "interleave_moe_layer_step": 2, "intermediate_size_mlp": 96, "head_dim": 16},
                   {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "image_size": 28, "patch_size": 14, "vision_output_dim": 32, "projector_input_dim": 32,
                    "projector_output_dim": 32}, lora_refusal=MOE),
    # the MoE block (dense MLP and experts side by side), per-layer inputs, the last two blocks reusing keys and values
    "gemma4_text": Case({**GEMMA4, "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2,
                         "moe_intermediate_size": 32, "num_kv_shared_layers": 2}, lora_refusal=MOE),
    "gemma4": Case(GEMMA4, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "num_key_value_heads": 2, "head_dim": 16}),
    "falcon_h1": Case(FALCON_H1, lora_refusal=MAMBA_OUT),
    "nemotron_h": Case(NEMOTRON_H, lora_refusal=MAMBA_OUT),  # Mamba-2, attention, experts and MLP blocks, in order
    "qwen3_next": Case({**HYBRID, **QWEN_EXPERTS, "mlp_only_layers": [0]}, lora_refusal=MOE),  # block 0 dense
    "qwen3_5_text": Case(HYBRID),
    "qwen3_5": Case({**HYBRID, "tie_word_embeddings": True}, QWEN_VISION),
    "qwen3_5_moe_text": Case({**HYBRID, **QWEN_EXPERTS}, lora_refusal=MOE),
    "qwen3_5_moe": Case({**HYBRID, **QWEN_EXPERTS}, QWEN_VISION, lora_refusal=MOE),
    "starcoder2": Case(lora_refusal=BIAS),
    "phi": Case(lora_refusal=BIAS),
}

BASE = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            initializer_range=0.2, max_position_embeddings=128, tie_word_embeddings=False)


def build_case(model_type: str, seed: int = 0, **extra: Any) -> torch.nn.Module:
    """A tiny random model of ``model_type`` in float32 with random non-zero biases and random norm gains (so bias
    folds and folds through post-norms are exercised); a vision-language wrapper as its image-text-to-text class,
    which is what its checkpoints hold. ``extra`` overrides the case's text config (a variant of the row)."""
    case = CASES[model_type]
    case = Case({**case.text, **extra}, case.vision, case.lora_refusal)
    torch.manual_seed(seed)
    if case.vision is None:
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**BASE, **case.text}))
    else:
        config = AutoConfig.for_model(model_type, text_config={**BASE, **case.text}, vision_config=case.vision,
                                      tie_word_embeddings=case.text.get("tie_word_embeddings", False))
        model = AutoModelForImageTextToText.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("bias", "_bias")):
                param.normal_(0, 0.2)
            if NORM.search(name):
                param.uniform_(0.8, 1.2)
    return model.eval()

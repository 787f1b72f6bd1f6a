"""The conformance harness's cases: for every model type in the architecture table, how to build a tiny random
model of it from its transformers config class, and what a LoRA adapter of a full ablation must do (carry it, or
be refused for the stated reason). A table row without a case here fails tests/test_architectures.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from conftest import HIDDEN, VOCAB

LAYERS4 = 4  # hybrids need both block kinds, MoE families a dense first block: four blocks for every case
EXPERTS = {"num_local_experts": 4, "num_experts_per_tok": 2}
QWEN_EXPERTS = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48}
MOE, BIAS = "mixture-of-experts", "has a bias"


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
    "qwen2": Case(),  # biases on q, k, v only: the writers have none
    "qwen3": Case({"head_dim": 16}),
    "phi3": Case(),
    "granite": Case({"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 2.0}),
    "gemma": Case({"head_dim": 16, "tie_word_embeddings": True}),
    "gemma2": Case({"head_dim": 16, "tie_word_embeddings": True}),
    "gemma3_text": Case({"head_dim": 16, "tie_word_embeddings": True}),
    "olmo2": Case(),
    "olmo3": Case(),
    "mixtral": Case(EXPERTS, lora_refusal=MOE),
    "qwen3_moe": Case({**QWEN_EXPERTS, "head_dim": 16}, lora_refusal=MOE),
    "qwen2_moe": Case(QWEN_EXPERTS, lora_refusal=MOE),
    "starcoder2": Case(lora_refusal=BIAS),
    "phi": Case(lora_refusal=BIAS),
}

BASE = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            initializer_range=0.2, max_position_embeddings=128, tie_word_embeddings=False)


def build_case(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of ``model_type`` in float32 with random non-zero biases (so bias folds are exercised);
    a vision-language wrapper as its image-text-to-text class, which is what its checkpoints hold."""
    case = CASES[model_type]
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
    return model.eval()

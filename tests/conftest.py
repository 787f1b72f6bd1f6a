"""Shared fixtures: tiny random models of every supported architecture, built from a config in seconds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from steerfold.directions.file import DirectionFile, save_direction_file

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the suite may reach the Hub: the Hub paths are tested through their seams

HIDDEN = 64
LAYERS = 3
VOCAB = 128

# (case name, model_type, extra config): one row per supported architecture plus the variants that matter.
TINY_CASES = [
    ("llama", "llama", {}),
    ("llama_bias", "llama", {"attention_bias": True, "mlp_bias": True}),
    ("mistral", "mistral", {}),
    ("qwen2", "qwen2", {}),
    ("qwen2_tied", "qwen2", {"tie_word_embeddings": True}),
    ("qwen3", "qwen3", {"head_dim": 16}),
    ("phi3", "phi3", {}),
    ("granite", "granite", {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 2.0}),
    ("gemma", "gemma", {"head_dim": 16, "tie_word_embeddings": True}),
    ("gemma2", "gemma2", {"head_dim": 16, "tie_word_embeddings": True}),
    ("gemma3_text", "gemma3_text", {"head_dim": 16, "tie_word_embeddings": True}),
    ("olmo2", "olmo2", {}),
    ("olmo3", "olmo3", {}),
    ("mixtral", "mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    ("qwen3_moe", "qwen3_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16}),
    ("qwen2_moe", "qwen2_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                "shared_expert_intermediate_size": 48}),
    ("starcoder2", "starcoder2", {}),
    ("phi", "phi", {}),
]
# Cases where a portable LoRA cannot express the edit exactly, and steerfold must refuse to write one.
LORA_REFUSED = {"llama_bias": "bias", "starcoder2": "bias", "phi": "bias",
                "mixtral": "mixture-of-experts", "qwen3_moe": "mixture-of-experts", "qwen2_moe": "mixture-of-experts"}


def tiny_config(model_type: str, **extra):
    base = dict(
        hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        initializer_range=0.2, max_position_embeddings=128, tie_word_embeddings=False,
    )
    base.update(extra)
    return AutoConfig.for_model(model_type, **base)


def build_tiny_model(model_type: str, seed: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **extra))
    with torch.no_grad():  # random, non-zero biases so that bias folds are exercised
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.2)
    return model.eval()


def save_tiny_model(model: torch.nn.Module, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    model.to(dtype).save_pretrained(path)
    model.to(torch.float32)
    return path


def random_direction(seed: int = 1, hidden: int = HIDDEN) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(hidden, generator=generator)
    return v / v.norm()


def write_direction(path: Path, vector: torch.Tensor | None = None, **metadata: str) -> Path:
    save_direction_file(path, DirectionFile(direction=random_direction() if vector is None else vector, metadata=metadata))
    return path


def folder_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under a folder (to prove it was not touched)."""
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*")) if f.is_file()
    }


def random_tokens(seed: int = 3, batch: int = 2, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


def residual_states(model: torch.nn.Module, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Residual stream at every layer index: the embedding output (after any multiplier) and each block output."""
    states: list[torch.Tensor] = []
    inner = model.model
    handles = [inner.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: states.append((args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True)]
    for block in inner.layers:
        handles.append(block.register_forward_hook(
            lambda _m, _i, out: states.append((out[0] if isinstance(out, tuple) else out).detach())))
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        for h in handles:
            h.remove()
    return states


@pytest.fixture(params=TINY_CASES, ids=[c[0] for c in TINY_CASES])
def tiny_case(request, tmp_path):
    """(case name, in-memory model, saved float32 folder) for each architecture."""
    name, model_type, extra = request.param
    model = build_tiny_model(model_type, **extra)
    folder = save_tiny_model(model, tmp_path / f"base-{name}")
    return name, model, folder


def run_cli(*args):
    """Invoke the steerfold CLI in-process with arguments made strings."""
    from click.testing import CliRunner

    from cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits

"""Write an edit as a PEFT LoRA adapter in the portable subset: uniform r, ``lora_alpha = r``, no bias, no
``modules_to_save``; it loads with ``PeftModel.from_pretrained(base, DIR)`` and vLLM."""

from __future__ import annotations

import json

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from steerfold.models.arch import ModelLayout
from steerfold.models.checkpoint import ModelFolder, read_tensors
from steerfold.edit.edits import Edit
from steerfold.edit.lora import lora_pair, lora_rank
from steerfold.errors import BadInput

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def lora_keys(module: str, embedding: bool) -> tuple[str, str]:
    """PEFT's saved names of (A, B) for one module."""
    if embedding:
        return f"{PEFT_PREFIX}{module}.lora_embedding_A", f"{PEFT_PREFIX}{module}.lora_embedding_B"
    return f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight"


def check_lora_can_carry(edit: Edit, layout: ModelLayout, gain_of=None) -> None:
    """Refuse, before writing anything, an edit that a portable LoRA cannot express exactly."""
    if edit.edits_embedding() and layout.tied_embeddings and edit.tied_embedding == "shared":
        raise BadInput(
            "a LoRA on the embedding cannot also edit the tied output head: use --tied-embedding untie "
            "(the adapter then edits the input embedding only) or --format merged"
        )
    module_maps = edit.module_maps(layout, gain_of)
    lora_rank(module_maps)  # refuses offsets and weight-only folds first: no adapter carries those on any model
    for hook in module_maps:
        writer = layout.writer(hook)
        assert writer is not None
        if writer.no_lora:
            raise BadInput(f"{hook}: {writer.no_lora}, so a portable LoRA cannot carry this edit: use --format merged")
        if writer.lora_module is None:
            raise BadInput(
                f"{hook} is a mixture-of-experts block, whose expert weights a portable LoRA cannot target: "
                "use --format merged"
            )
        if writer.has_bias:
            raise BadInput(
                f"{writer.lora_module} has a bias, and the edit changes it by U Vᵀ β, which a portable LoRA "
                "(no lora_bias) cannot carry: use --format merged"
            )
    if layout.quantized:
        how = ("FP8 kernels multiply FP8-rounded activations, so an adapter's U Vᵀ W x does not cancel what the base "
               "writes" if layout.quantized == "fp8" else "a quantized runtime's writes are not what U Vᵀ W x assumes")
        raise BadInput(f"the base's weights are stored quantized ({layout.quantized}) and an adapter runs over them "
                       f"as stored: {how}; use --format merged (the edited modules written dequantized)")


def write_lora_adapter(folder: ModelFolder, layout: ModelLayout, edit: Edit, dest: Path, base_model: str,
                       revision: str | None = None) -> dict:
    """Compute ``lora_A = Vᵀ W``, ``lora_B = U`` for every edited writer in one pass over the shards."""
    from peft import LoraConfig  # imported here: peft is slow to import and only this export needs it

    gains = read_tensors(folder, layout.post_norm_keys)
    check_lora_can_carry(edit, layout, gains.__getitem__)
    module_maps = edit.module_maps(layout, gains.__getitem__)
    rank = lora_rank(module_maps)
    by_key = {w.tensors[0][0]: w for w in layout.writers if w.hook in module_maps}
    tensors: dict[str, torch.Tensor] = {}
    for entry in folder.entries(scratch=dest / ".scratch"):
        writer = by_key.get(entry.name)
        if writer is None:
            continue
        embedding = writer.role == "embedding"
        lora_a, lora_b = lora_pair(module_maps[writer.hook], entry.load(), embedding, rank)
        key_a, key_b = lora_keys(layout.in_memory(writer.lora_module), embedding)
        tensors[key_a], tensors[key_b] = lora_a, lora_b
    shutil.rmtree(dest / ".scratch", ignore_errors=True)
    target_modules = sorted(layout.in_memory(by_key[k].lora_module) for k in by_key)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=target_modules,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
        revision=revision,
        inference_mode=True,
    )
    config.save_pretrained(str(dest))
    _stable_json(dest / "adapter_config.json")
    save_file(tensors, str(dest / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return {"rank": rank, "modules": len(module_maps)}


def _stable_json(path: Path) -> None:
    """Rewrite a JSON file with sorted keys and sorted string lists: PEFT keeps target_modules as a set, whose order
    changes from one process to the next, so two identical exports would differ."""
    data = json.loads(path.read_text())
    data = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v for k, v in data.items()}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

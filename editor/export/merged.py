"""Write an edit folded into a merged checkpoint that ``AutoModelForCausalLM.from_pretrained`` loads."""

from __future__ import annotations

from pathlib import Path

import torch

from editor.arch import ModelLayout
from editor.checkpoint import ModelFolder, copy_side_files, update_config, write_transformed_checkpoint
from editor.edits import Edit, fold_tensor


def unties_output_head(edit: Edit, layout: ModelLayout) -> bool:
    """Whether this edit gives a tied output head its own, unedited copy of the embedding."""
    return edit.edits_embedding() and layout.tied_embeddings and edit.tied_embedding == "untie"


def write_merged_checkpoint(folder: ModelFolder, layout: ModelLayout, edit: Edit, dest: Path) -> dict:
    """Fold the edit into every residual writer shard by shard; every other tensor passes through unchanged."""
    edit.check_foldable(layout)
    module_maps = edit.module_maps(layout)
    untie = unties_output_head(edit, layout)
    embedding_key = f"{layout.embedding.module}.weight"
    head_key = f"{layout.architecture.lm_head}.weight"

    def transform(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {name: fold_tensor(name, tensor, layout, module_maps)}
        if untie and name == embedding_key and not layout.has_lm_head_tensor:
            out[head_key] = tensor
        return out

    copy_side_files(folder.path, dest)
    write_transformed_checkpoint(folder, dest, transform)
    if untie:
        update_config(dest, tie_word_embeddings=False)
    return {"untied_output_head": untie, "edited_modules": len(module_maps)}

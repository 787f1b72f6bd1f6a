"""Write an edit folded into a merged checkpoint that ``AutoModelForCausalLM.from_pretrained`` loads.

Streaming: tensors the edit does not touch are copied byte for byte, residual writers are folded one tensor at
a time, so memory stays at a few tensors whatever the model size (see ``editor.stream``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from editor.arch import ModelLayout
from editor.checkpoint import ModelFolder, copy_side_files, read_tensors, update_config
from editor.edits import Edit, fold_tensor
from editor.stream import OutputTensor, plan_shards, write_index, write_shards

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


def unties_output_head(edit: Edit, layout: ModelLayout) -> bool:
    """Whether this edit gives a tied output head its own, unedited copy of the embedding."""
    return edit.edits_embedding() and layout.tied_embeddings and edit.tied_embedding == "untie"


def check_merged_can_carry(edit: Edit, layout: ModelLayout, gain_of=None) -> None:
    """Refuse, before writing anything, an edit the weights cannot carry (an offset without a bias to hold it)."""
    edit.check_foldable(layout)
    edit.module_maps(layout, gain_of)


def write_merged_checkpoint(
    folder: ModelFolder, layout: ModelLayout, edit: Edit, dest: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> dict:
    """Fold the edit into every residual writer; every other tensor passes through unchanged."""
    edit.check_foldable(layout)
    gains = read_tensors(folder, [w.post_norm for w in layout.writers if w.post_norm])
    module_maps = edit.module_maps(layout, gains.__getitem__)
    untie = unties_output_head(edit, layout)
    embedding_key = layout.embedding.tensors[0][0]
    head_key = f"{layout.architecture.lm_head}.weight"

    outputs: list[OutputTensor] = []
    for entry in folder.entries(scratch=dest / ".scratch"):
        found = layout.writer_of_key(entry.name)
        outputs.append(OutputTensor(entry.name, entry, transform=found is not None and found[0].hook in module_maps))
        if untie and entry.name == embedding_key and not layout.has_lm_head_tensor:
            outputs.append(OutputTensor(head_key, entry, transform=False))

    def transform(name: str, tensor: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return fold_tensor(name, tensor, layout, module_maps, out)

    copy_side_files(folder.path, dest)
    shards = plan_shards(outputs, max_shard_bytes)
    digests: dict[str, str] = {}
    weight_map = write_shards(shards, dest, transform, digests)
    shutil.rmtree(dest / ".scratch", ignore_errors=True)
    if len(shards) > 1:
        write_index(dest, weight_map, sum(t.source.nbytes for t in outputs))
    if untie:
        update_config(dest, tie_word_embeddings=False)
    return {"untied_output_head": untie, "edited_modules": len(module_maps), "shards": len(shards), "digests": digests}

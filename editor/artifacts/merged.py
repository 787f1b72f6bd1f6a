"""Write an edit folded into a merged checkpoint that ``AutoModelForCausalLM.from_pretrained`` loads.

Streaming: tensors the edit does not touch are copied byte for byte, residual writers are folded one tensor at
a time, so memory stays at a few tensors whatever the model size (see ``editor.artifacts.safetensors_io``). The output lists the
tensors no edit can change first and the residual writers last, so that the copying can start before the edit is
built (``start_merged_checkpoint``) and run while torch is imported. Nothing here imports torch at load time.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from steerfold.artifacts.dequantized import Dequantization, plan_dequantization
from steerfold.models.arch import ModelLayout
from steerfold.models.checkpoint import ModelFolder, copy_side_files, read_tensors, update_config
from steerfold.edit.spec import DEFAULT_MAX_SHARD_BYTES
from steerfold.interrupts import held
from steerfold.artifacts.safetensors_io import OutputTensor, plan_shards, write_index
from steerfold.artifacts.shard_writer import ShardWriter

if TYPE_CHECKING:
    from steerfold.edit.edits import Edit

Say = Callable[[str], None]


def unties_output_head(edit: Edit, layout: ModelLayout) -> bool:
    """Whether this edit gives a tied output head its own, unedited copy of the embedding."""
    return edit.edits_embedding() and layout.tied_embeddings and edit.tied_embedding == "untie"


def may_add_head_copy(layout: ModelLayout, tied_embedding: str) -> bool:
    """Whether some edit of this model in this mode could add an output head tensor (a copy of the embedding, where
    a tied checkpoint stores none): then the output's tensors are known only once the edit is."""
    return layout.tied_embeddings and not layout.has_lm_head_tensor and tied_embedding == "untie"


def check_merged_can_carry(edit: Edit, layout: ModelLayout, gain_of=None) -> None:
    """Refuse an edit the weights cannot carry (an offset without a bias to hold it)."""
    edit.check_foldable(layout)
    edit.module_maps(layout, gain_of)


@dataclass
class MergedWrite:
    """A merged checkpoint being written: the shard writer already copying, waiting for the edit."""

    folder: ModelFolder
    layout: ModelLayout
    dest: Path
    writer: ShardWriter
    tensors: list[OutputTensor]
    head_copy: bool
    dequantization: Dequantization | None = None  # a quantized checkpoint's modules written dequantized


def start_merged_checkpoint(folder: ModelFolder, layout: ModelLayout, dest: Path, head_copy: bool,
                            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, edited_hooks: Iterable[str] | None = None,
                            say: Say = lambda _line: None) -> MergedWrite:
    """Copy the side files and start writing the shards: every tensor no edit can change at once, the residual
    writers once ``finish_merged_checkpoint`` gives the edit. ``head_copy``: the output gets an output head tensor,
    a copy of the unedited embedding (a tied checkpoint that stores none, untied by the edit). Pickled shards are
    converted to safetensors first, which imports torch. A quantized checkpoint needs ``edited_hooks`` (the edit's
    module maps): the modules they change are written dequantized (``editor.artifacts.dequantized``), as ``say``
    tells before anything is written."""
    embedding_key = layout.embedding.tensors[0][0]
    head_key = f"{layout.lm_head}.weight"
    fixed: list[OutputTensor] = []
    editable: list[OutputTensor] = []
    entries = folder.entries(scratch=dest / ".scratch")
    for entry in entries:
        is_writer = layout.writer_of_key(entry.name) is not None
        (editable if is_writer else fixed).append(OutputTensor(entry.name, entry, editable=is_writer))
        if head_copy and entry.name == embedding_key:
            fixed.append(OutputTensor(head_key, entry, editable=False))
    tensors = fixed + editable
    dequantization = None
    if layout.quantized:
        if edited_hooks is None:
            raise AssertionError("a quantized checkpoint's output is planned once the edit is known")
        dequantization = plan_dequantization(folder.config, entries, layout, edited_hooks)
    if dequantization is not None:
        tensors = dequantization.output_tensors(tensors)
        say(dequantization.describe(sum(e.nbytes for e in entries), sum(t.source.nbytes for t in tensors)))
    copy_side_files(folder.path, dest)
    writer = ShardWriter(plan_shards(tensors, max_shard_bytes), dest)
    return MergedWrite(folder, layout, dest, writer, tensors, head_copy, dequantization)


def finish_merged_checkpoint(started: MergedWrite, edit: Edit) -> dict:
    """Fold the edit into every residual writer as the writer reaches it, and finish the checkpoint. On any error
    or interrupt the writer is stopped first, so the caller can remove its folder."""
    from steerfold.edit.fold import fold_tensor
    from steerfold.artifacts.folding import folded_bytes

    layout = started.layout
    try:
        untie = unties_output_head(edit, layout)
        if started.head_copy != (untie and not layout.has_lm_head_tensor):
            raise AssertionError("the merged checkpoint was planned for another output head")
        edit.check_foldable(layout)
        gains = read_tensors(started.folder, layout.post_norm_keys)
        module_maps = edit.module_maps(layout, gains.__getitem__)

        dequantized = started.dequantization.tensors if started.dequantization else {}

        def fold(name, tensor, out):
            edited = fold_tensor(name, tensor, layout, module_maps, out)
            if edited is tensor:  # unedited: copied as stored, or written dequantized in the output's dtype
                return out.copy_(tensor) if name in dequantized else None
            return edited

        started.writer.supply(folded_bytes(started.tensors, fold))
        weight_map, digests = started.writer.result()
    except BaseException:
        with held():  # a second signal waits until the writer has stopped
            started.writer.cancel()
        raise
    shutil.rmtree(started.dest / ".scratch", ignore_errors=True)
    shards = started.writer.shards
    if len(shards) > 1:
        write_index(started.dest, weight_map, sum(t.source.nbytes for t in started.tensors))
    if untie:
        update_config(started.dest, tie_word_embeddings=False)
    details = {"untied_output_head": untie, "edited_modules": len(module_maps), "shards": len(shards), "digests": digests}
    if started.dequantization is not None:
        details["dequantized"] = _record_dequantization(started)
    return details


def _record_dequantization(started: MergedWrite) -> dict:
    """Keep config.json's quantization section true for what was written; what was dequantized, for the records."""
    dequantization = started.dequantization
    assert dequantization is not None
    section = dequantization.section(started.folder.config, started.layout)
    text_config = started.folder.config.get("text_config")
    if "quantization_config" not in started.folder.config and isinstance(text_config, dict):
        update_config(started.dest, text_config={**text_config, "quantization_config": section})
    else:
        update_config(started.dest, quantization_config=section)
    return {"format": dequantization.quantization.method, "label": dequantization.quantization.label,
            "dtype": dequantization.dtype, "modules": list(dequantization.modules)}


def write_merged_checkpoint(folder: ModelFolder, layout: ModelLayout, edit: Edit, dest: Path,
                            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, say: Say = lambda _line: None) -> dict:
    """Fold the edit into every residual writer; every other tensor passes through unchanged (on a quantized
    checkpoint, the modules the edit changes are written dequantized, and ``say`` tells the size change first)."""
    head_copy = unties_output_head(edit, layout) and not layout.has_lm_head_tensor
    hooks = None
    if layout.quantized:
        gains = read_tensors(folder, layout.post_norm_keys)
        maps = edit.module_maps(layout, gains.__getitem__)
        hooks = [hook for hook, residual_map in maps.items() if residual_map.U.any()]  # an offset leaves weights as they are
    started = start_merged_checkpoint(folder, layout, dest, head_copy, max_shard_bytes, hooks, say)
    return finish_merged_checkpoint(started, edit)

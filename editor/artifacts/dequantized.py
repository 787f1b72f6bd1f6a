"""A merged checkpoint of a quantized model (FP8 block-scaled, MXFP4; ``editor.models.quantization``): the
modules the edit changes are dequantized, folded in float32 and written in the checkpoint's own dtype (bfloat16
unless config.json names float16 or float32); their scales are dropped; every other tensor, quantized or not, is
copied byte for byte; and config.json's ``quantization_config`` lists the dequantized modules in
``modules_to_not_convert``, which transformers' FP8 and MXFP4 loaders honour, so the section stays true for what
is on disk. transformers swaps a whole module for its quantized version, so an unedited weight that shares a
module with an edited one (an expert's gate and up projections) is written dequantized too, unchanged.

What grows, and by how much, is said before anything is written (``Dequantization.describe``). No torch here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from steerfold.artifacts.safetensors_io import DTYPES, OutputTensor, TensorEntry, read_header
from steerfold.models.loading import checkpoint_dtype
from steerfold.models.quantization import (QuantizedTensor, Quantization, not_converted, quantization_of,
                                           quantized_tensors)

if TYPE_CHECKING:
    import torch

    from steerfold.models.arch import ModelLayout
    from steerfold.models.checkpoint import ModelFolder

# torch dtype name → safetensors dtype, for the dtypes a dequantized weight may be written in
WRITTEN = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def written_dtype(config: dict) -> str:
    """The dtype dequantized weights are written in: the checkpoint's own (config.json's ``dtype`` or
    ``torch_dtype``) where it is a float type transformers loads, else bfloat16."""
    recorded = checkpoint_dtype(config)
    return recorded if recorded in WRITTEN else "bfloat16"


@dataclass(frozen=True)
class DequantizedEntry:
    """A weight written dequantized: planned like a stored tensor (its output name, dtype, shape and size), and
    loaded as the float32 weight the fold starts from."""

    name: str
    dtype: str  # safetensors dtype written
    shape: tuple[int, ...]
    tensor: QuantizedTensor

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]

    def load(self) -> torch.Tensor:
        return self.tensor.load()


@dataclass(frozen=True)
class Dequantization:
    """What a merged export of a quantized checkpoint writes dequantized: whole modules, by their names on disk."""

    quantization: Quantization
    modules: tuple[str, ...]
    tensors: dict[str, QuantizedTensor]  # every weight of those modules, by name
    edited: frozenset[str]  # the weights among them that the edit changes
    dtype: str  # torch dtype name they are written in
    quantized_parts: frozenset[str]  # the stored parts of every quantized weight, dequantized or not

    def output_tensors(self, planned: list[OutputTensor]) -> list[OutputTensor]:
        """The merged checkpoint's tensors: each dequantized weight once, in place of its stored parts (the scales
        go), and every part of a weight left quantized copied as it is; tensors copied as they are come first."""
        owners = {part.name: tensor for tensor in self.tensors.values() for part in tensor.parts}
        out = []
        for planned_tensor in planned:
            owner = owners.get(planned_tensor.source.name)
            if owner is None:
                copied = planned_tensor.source.name in self.quantized_parts
                out.append(OutputTensor(planned_tensor.name, planned_tensor.source,
                                        editable=planned_tensor.editable and not copied))
            elif planned_tensor.source is owner.parts[0]:
                entry = DequantizedEntry(owner.name, WRITTEN[self.dtype], owner.shape, owner)
                out.append(OutputTensor(owner.name, entry, editable=True))  # type: ignore[arg-type]
        return sorted(out, key=lambda tensor: tensor.editable)

    def section(self, config: dict, layout: ModelLayout) -> dict:
        """config.json's quantization section for the output: the dequantized modules (on disk, and as the loaded
        model names them where that differs) are not converted; a section that had no list keeps transformers'
        default skip, the output head."""
        from steerfold.models.quantization import quantization_section

        names = list(dict.fromkeys(name for module in self.modules for name in (module, layout.in_memory(module))))
        return not_converted(quantization_section(config) or {}, names, [layout.architecture.lm_head])

    def describe(self, before: int, after: int) -> str:
        """The line said before anything is written: what is dequantized, into which dtype, and the size change."""
        companions = len(self.tensors) - len(self.edited)
        shared = f", {companions} of them unedited but in an edited module" if companions else ""
        grown = after - before
        modules = "the module" if len(self.modules) == 1 else f"the {len(self.modules)} modules"
        weights = f"{len(self.tensors)} weight{'s' if len(self.tensors) != 1 else ''}"
        return (f"{self.quantization.label} checkpoint: {modules} the edit changes are written dequantized in "
                f"{self.dtype} ({weights}{shared}, scales dropped), every other tensor as stored: {size(before)} → "
                f"{size(after)} ({'+' if grown >= 0 else '−'}{size(abs(grown))}, {100 * grown / max(before, 1):+.0f}%)")


def size(n: float) -> str:
    """A byte count in words."""
    if n >= 1e8:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def plan_dequantization(config: dict, entries: list[TensorEntry], layout: ModelLayout,
                        edited_hooks: Iterable[str]) -> Dequantization | None:
    """What to dequantize for an edit that changes the weights of the writers ``edited_hooks`` (the hooks of its
    module maps with a linear part: an offset only changes biases): every module holding a quantized tensor of
    such a writer, whole. None where nothing edited is quantized."""
    quantization = quantization_of(config)
    if quantization is None:
        return None
    stored = quantized_tensors(entries, quantization)
    edited = {key for hook in edited_hooks if (writer := layout.writer(hook))
              for key, _ in writer.tensors if key in stored}
    modules = tuple(dict.fromkeys(stored[key].module for key in sorted(edited)))
    if not modules:
        return None
    tensors = {name: tensor for name, tensor in stored.items() if tensor.module in modules}
    parts = frozenset(part.name for tensor in stored.values() for part in tensor.parts)
    return Dequantization(quantization, modules, tensors, frozenset(edited), written_dtype(config), parts)


def merged_size_bound(folder: ModelFolder) -> int:
    """At most how many bytes a merged export of this folder writes: its shards, plus for a quantized checkpoint
    what every quantized weight would add if it were written dequantized (checked against free space before any
    compute; the edit decides how much of it is used)."""
    total = sum(shard.stat().st_size for shard in folder.shards)
    quantization = quantization_of(folder.config, str(folder.path))
    if quantization is None or folder.pickled:
        return total
    entries = [entry for shard in folder.shards for entry in read_header(shard)[0]]
    width = DTYPES[WRITTEN[written_dtype(folder.config)]][1]
    stored = quantized_tensors(entries, quantization).values()
    return total + sum(max(0, math.prod(t.shape) * width - t.stored_bytes) for t in stored)

"""Checkpoints whose weights are stored quantized: which format config.json's ``quantization_config`` names, and
which stored tensors make up each quantized weight.

Two formats are read, as transformers stores and loads them:

- ``fp8`` (DeepSeek-V3/R1, Qwen3 FP8 and others): a weight ``W`` [.., R, C] stored as float8 ``*.weight`` beside
  ``*.weight_scale_inv`` [.., ⌈R/bm⌉, ⌈C/bn⌉] (``weight_block_size`` [bm, bn]; one scalar without it); the value is
  ``weight × scale_inv`` per block. An optional ``*.activation_scale`` belongs to the FP8 kernel only.
- ``mxfp4`` (gpt-oss): the experts' ``*_blocks`` [E, rows, G, 16] (two E2M1 values per byte, the low nibble first)
  and ``*_scales`` [E, rows, G] (E8M0 exponents, bias 127) of 32-value groups; the weight in memory is the
  dequantized [E, rows, 32 G] transposed to [E, 32 G, rows] (gpt-oss's ``down_proj`` [E, inter, hidden]).

transformers swaps whole modules for their quantized versions: each linear module, and an ``experts`` module with
every expert in it (its ``modules_to_not_convert`` names modules, not tensors). So a dequantized weight takes every
quantized weight of its module along (``QuantizedTensor.module``). Any other ``quant_method`` is refused in one
line naming it (``UnsupportedQuantization``). The arithmetic is ``editor.models.dequantize``; no torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from steerfold.errors import BadInput, UnsupportedQuantization

if TYPE_CHECKING:
    import torch

    from steerfold.artifacts.safetensors_io import TensorEntry

Method = Literal["fp8", "mxfp4"]
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
MXFP4_GROUP = 32  # values per E8M0 scale; 16 bytes of E2M1 pairs
# What other quant_method values are, for the refusal (transformers' QuantizationMethod names).
KNOWN_METHODS = {
    "gptq": "GPTQ", "awq": "AWQ", "aqlm": "AQLM", "vptq": "VPTQ", "quanto": "optimum-quanto", "eetq": "EETQ",
    "higgs": "HIGGS", "hqq": "HQQ", "compressed-tensors": "compressed-tensors (llm-compressor)",
    "fbgemm_fp8": "FBGEMM FP8 (per-row scales)", "torchao": "torchao", "bitnet": "BitNet", "spqr": "SpQR",
    "auto-round": "AutoRound", "quark": "Quark", "fp_quant": "FP-Quant", "gguf": "GGUF",
}


@dataclass(frozen=True)
class Quantization:
    """A checkpoint's quantization as config.json records it: the method, its section as written, FP8's block."""

    method: Method
    section: dict
    block: tuple[int, int] | None = None  # FP8 weight_block_size [rows, columns]; None: one scale per tensor

    @property
    def label(self) -> str:
        if self.method == "mxfp4":
            return "MXFP4"
        return f"FP8 ({self.block[0]}×{self.block[1]} blocks)" if self.block else "FP8 (one scale per tensor)"


def quantization_section(config: dict) -> dict | None:
    """config.json's ``quantization_config`` (a vision-language wrapper's may sit in its ``text_config``)."""
    inner = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    section = config.get("quantization_config") or inner.get("quantization_config")
    return section if section else None


def quantization_of(config: dict, where: str = "the checkpoint") -> Quantization | None:
    """The checkpoint's quantization (None: its weights are stored as they run); a format steerfold cannot edit is
    one line naming it and what to do instead."""
    section = quantization_section(config)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise BadInput(f"{where}: config.json's quantization_config is not an object: repair or re-download it")
    method = str(section.get("quant_method", "")).lower()
    if method == "mxfp4":
        return Quantization("mxfp4", section)
    if method == "fp8":
        return Quantization("fp8", section, _fp8_block(section, where))
    raise _refused(where, _label(method, section), method)


def _label(method: str, section: dict) -> str:
    """A quantization format in words (bitsandbytes says which of its two)."""
    if method == "bitsandbytes":
        bits = "4-bit" if section.get("load_in_4bit") or section.get("_load_in_4bit") else "8-bit"
        return f"bitsandbytes {bits}"
    return KNOWN_METHODS.get(method, method or "an unnamed method")


def _refused(where: str, label: str, method: str) -> UnsupportedQuantization:
    named = f" (quant_method '{method}')" if method else ""
    return UnsupportedQuantization(
        f"{where} stores its weights quantized with {label}{named}, which steerfold cannot edit yet (it edits FP8 "
        "block-scaled and MXFP4 checkpoints): edit the model's unquantized release, or dequantize it to bfloat16 first")


def _fp8_block(section: dict, where: str) -> tuple[int, int] | None:
    """FP8's block size; the variants steerfold does not read (FP4 experts, FP8 embeddings) are refused."""
    if section.get("expert_dtype", "fp8") != "fp8":
        raise _refused(where, "FP8 with FP4-packed experts (expert_dtype fp4)", "fp8")
    if section.get("modules_to_convert"):
        raise _refused(where, "FP8 with FP8 embeddings (modules_to_convert)", "fp8")
    block = section.get("weight_block_size")
    if block is None:
        return None
    if not (isinstance(block, list) and len(block) == 2 and all(isinstance(n, int) and n > 0 for n in block)):
        raise BadInput(f"{where}: quantization_config.weight_block_size is {block!r}, not two positive integers: "
                       "repair or re-download config.json")
    return block[0], block[1]


@dataclass(frozen=True)
class QuantizedTensor:
    """One weight as the model uses it, stored quantized: its name and shape in memory, the stored tensors it is
    made of, and the module transformers swaps for a quantized one (which must be dequantized as a whole)."""

    name: str
    shape: tuple[int, ...]
    parts: tuple[TensorEntry, ...]  # FP8: weight, scale_inv[, activation_scale]; MXFP4: blocks, scales
    module: str
    quantization: Quantization

    def load(self) -> torch.Tensor:
        """The dequantized weight in float32, in its in-memory layout."""
        from steerfold.models.dequantize import dequantize_fp8, dequantize_mxfp4

        if self.quantization.method == "mxfp4":
            return dequantize_mxfp4(self.parts[0].load(), self.parts[1].load())
        return dequantize_fp8(self.parts[0].load(), self.parts[1].load(), self.quantization.block)

    @property
    def stored_bytes(self) -> int:
        return sum(part.nbytes for part in self.parts)


def swapped_module(name: str) -> str:
    """The module whose weight ``name`` is: an ``experts`` module as a whole (transformers fuses its experts into
    one module and swaps it whole), else the tensor's own module."""
    parts = name.split(".")
    if "experts" in parts[:-1]:
        return ".".join(parts[: parts.index("experts") + 1])
    return name.removesuffix(".weight") if name.endswith(".weight") else name.rsplit(".", 1)[0]


def quantized_tensors(entries: list[TensorEntry], quantization: Quantization) -> dict[str, QuantizedTensor]:
    """Every quantized weight of a checkpoint, by its name in memory, with its stored parts (headers only)."""
    by_name = {entry.name: entry for entry in entries}
    found = _mxfp4_tensors(by_name, quantization) if quantization.method == "mxfp4" else _fp8_tensors(by_name, quantization)
    return {tensor.name: tensor for tensor in found}


def _fp8_tensors(by_name: dict[str, TensorEntry], quantization: Quantization) -> list[QuantizedTensor]:
    found = []
    for name, entry in by_name.items():
        if entry.dtype not in FP8_DTYPES:
            continue
        stem = name.removesuffix("weight") if name.endswith(".weight") else name + "_"
        scale_name = stem + ("weight_scale_inv" if name.endswith(".weight") else "scale_inv")
        scale = by_name.get(scale_name)
        if scale is None:
            raise BadInput(f"'{name}' is stored as {entry.dtype} without its scale '{scale_name}': the FP8 checkpoint "
                           "is incomplete, or keeps its scales under other names; re-download or re-save it")
        _check_fp8_scale(entry, scale, quantization.block)
        activation = by_name.get(stem + "activation_scale")
        parts = (entry, scale) + ((activation,) if activation is not None else ())
        found.append(QuantizedTensor(name, entry.shape, parts, swapped_module(name), quantization))
    return found


def _check_fp8_scale(weight: TensorEntry, scale: TensorEntry, block: tuple[int, int] | None) -> None:
    """A scale grid that does not cover its weight block by block is a corrupt checkpoint."""
    if block is None:
        expected_ok = math.prod(scale.shape) == 1
    else:
        *lead, rows, cols = weight.shape
        expected_ok = tuple(scale.shape) == (*lead, -(-rows // block[0]), -(-cols // block[1]))
    if not expected_ok or scale.dtype not in ("F32", "BF16", "F16", "U8"):
        raise BadInput(f"'{scale.name}' ({scale.dtype} {list(scale.shape)}) is not the scale grid of '{weight.name}' "
                       f"{list(weight.shape)} with blocks {list(block) if block else 'per tensor'}: "
                       "the FP8 checkpoint is corrupt; re-download it")


def _mxfp4_tensors(by_name: dict[str, TensorEntry], quantization: Quantization) -> list[QuantizedTensor]:
    found = []
    for name, blocks in by_name.items():
        if not name.endswith("_blocks") or blocks.dtype != "U8":
            continue
        stem = name.removesuffix("_blocks")
        scales = by_name.get(stem + "_scales")
        shape = blocks.shape
        if scales is None or scales.dtype != "U8" or len(shape) != 4 or shape[3] != MXFP4_GROUP // 2 \
                or tuple(scales.shape) != tuple(shape[:3]):
            raise BadInput(f"'{name}' {list(shape)} has no matching '{stem}_scales' (uint8 [E, rows, groups]): "
                           "the MXFP4 checkpoint is incomplete or corrupt; re-download it")
        logical = (shape[0], shape[2] * MXFP4_GROUP, shape[1])
        found.append(QuantizedTensor(stem, logical, (blocks, scales), swapped_module(stem), quantization))
    return found


def logical_names(entries: list[TensorEntry], quantized: dict[str, QuantizedTensor]) -> list[str]:
    """The tensor names the model uses: each quantized weight's parts stand for the weight itself."""
    parts = {part.name for tensor in quantized.values() for part in tensor.parts}
    return [entry.name for entry in entries if entry.name not in parts] + list(quantized)


def not_converted(section: dict, modules: list[str], defaults: list[str]) -> dict[str, Any]:
    """The quantization section with ``modules`` added to ``modules_to_not_convert``, so that transformers loads
    them as plain modules. A section without the list relied on transformers' default skips (the output head):
    ``defaults`` keeps them, since a list replaces those defaults."""
    before = section.get("modules_to_not_convert")
    listed = list(defaults) if before is None else list(before)
    return {**section, "modules_to_not_convert": listed + [m for m in modules if m not in listed]}

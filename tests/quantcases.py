"""Tiny quantized checkpoints for the tests, written by reference quantizers taken from the format definitions
(not from steerfold's or transformers' code):

- FP8 block-scaled (DeepSeek-V3, Qwen3 FP8): each [bm, bn] block of a linear weight is divided by
  ``scale_inv = amax / 448`` (448: the largest float8_e4m3fn), rounded to float8_e4m3fn, and stored as ``*.weight``
  beside the float32 grid ``*.weight_scale_inv`` [⌈R/bm⌉, ⌈C/bn⌉]; config.json gets ``quant_method: fp8``.
- MXFP4 (gpt-oss's experts): the weight in memory [E, X, rows] is stored by rows, X values each, cut into groups
  of 32; a group shares the exponent ``e = ⌈log2(amax / 6)⌉`` (6: the largest E2M1) stored as the byte e + 127
  (E8M0), and each value is the nearest E2M1 code of ``v / 2^e`` (sign bit 3, magnitudes 0, ½, 1, 1½, 2, 3, 4, 6),
  two codes a byte, the first in the low nibble: ``*_blocks`` [E, rows, X/32, 16] and ``*_scales`` [E, rows, X/32].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FP8_MAX = 448.0
E2M1_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def fp8_quantize(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn weight, float32 scale_inv grid) of a [.., R, C] weight in [bm, bn] blocks."""
    bm, bn = block
    rows, cols = weight.shape[-2:]
    grid = torch.empty(*weight.shape[:-2], -(-rows // bm), -(-cols // bn))
    stored = torch.empty(weight.shape, dtype=torch.float8_e4m3fn)
    for i in range(grid.shape[-2]):
        for j in range(grid.shape[-1]):
            cell = (..., slice(i * bm, (i + 1) * bm), slice(j * bn, (j + 1) * bn))
            values = weight[cell].to(torch.float32)
            amax = values.abs().amax(dim=(-2, -1))
            scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
            grid[..., i, j] = scale
            stored[cell] = (values / scale[..., None, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return stored, grid


def mxfp4_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks uint8 [E, rows, X/32, 16], scales uint8 [E, rows, X/32]) of a weight [E, X, rows] in memory."""
    rows_major = weight.transpose(1, 2).to(torch.float32)
    experts, rows, width = rows_major.shape
    groups = rows_major.reshape(experts, rows, width // 32, 32)
    amax = groups.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.ceil(torch.log2(amax.clamp(min=1e-30) / 6)), torch.zeros_like(amax))
    exponent = exponent.clamp(-127, 127)
    scaled = (groups / torch.exp2(exponent).unsqueeze(-1)).clamp(-6, 6)
    magnitude = (scaled.abs().unsqueeze(-1) - E2M1_MAGNITUDES).abs().argmin(dim=-1)
    codes = (magnitude | ((scaled < 0).long() << 3)).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), (exponent + 127).to(torch.uint8)


def fp8_weights(name: str, tensor: torch.Tensor) -> bool:
    """Which tensors an FP8 release quantizes: every linear weight of the blocks, not norms or routers."""
    return (".layers." in name and name.endswith(".weight") and tensor.ndim == 2 and "norm" not in name
            and not name.endswith(("mlp.gate.weight", "router.weight")))


def quantize_fp8_folder(folder: Path, block: tuple[int, int] = (32, 32), static: bool = False) -> Path:
    """Rewrite a saved tiny checkpoint as an FP8 block-scaled one, in place; ``static``: with the per-tensor
    ``activation_scale`` the static activation scheme stores beside each weight."""
    stored = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        if fp8_weights(name, tensor):
            stem = name.removesuffix("weight")
            stored[name], stored[stem + "weight_scale_inv"] = fp8_quantize(tensor, block)
            if static:
                stored[stem + "activation_scale"] = torch.tensor(0.01)
        else:
            stored[name] = tensor
    save_file(stored, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return with_section(folder, {"quant_method": "fp8", "activation_scheme": "static" if static else "dynamic",
                                 "fmt": "e4m3", "weight_block_size": list(block)})


def quantize_mxfp4_folder(folder: Path) -> Path:
    """Rewrite a saved tiny gpt-oss as its MXFP4 release stores it (experts only), in place."""
    stored = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        if name.endswith(("experts.down_proj", "experts.gate_up_proj")):
            stored[name + "_blocks"], stored[name + "_scales"] = mxfp4_quantize(tensor)
        else:
            stored[name] = tensor
    save_file(stored, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return with_section(folder, {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]})


def with_section(folder: Path, section: dict, **changes) -> Path:
    """config.json with this quantization section (and other keys changed)."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes, "quantization_config": section}, indent=2))
    return folder

"""Dequantizing the two stored formats ``editor.models.quantization`` reads, in float32, exactly as transformers'
own loaders do (``integrations/finegrained_fp8.py``'s ``Fp8Dequantize`` and ``integrations/mxfp4.py``'s
``convert_moe_packed_tensors``): the same products, so a fold of these weights equals runtime hooks on the model
transformers dequantizes. Each works a slice at a time, so no temporary is much larger than the result."""

from __future__ import annotations

import torch

# E2M1 (FP4) by its 4-bit code: sign in bit 3, then exponent and mantissa.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
E8M0_BIAS = 127


def fp8_scales(scale_inv: torch.Tensor) -> torch.Tensor:
    """The float32 multipliers of FP8 blocks: float scales as they are, E8M0 bytes (``scale_fmt: ue8m0`` stored as
    uint8) as 2^(byte − 127)."""
    if scale_inv.dtype == torch.uint8:
        return torch.exp2(scale_inv.to(torch.float32) - E8M0_BIAS)
    return scale_inv.to(torch.float32)


def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] | None) -> torch.Tensor:
    """``weight × scale_inv`` per [bm, bn] block of the last two dimensions (one scale for the whole tensor when
    ``block`` is None), in float32. Edge blocks may be partial: block (i, j) covers rows i·bm… and columns j·bn…,
    as DeepSeek's reference and transformers' quantizer lay them out."""
    out = weight.to(torch.float32)
    scales = fp8_scales(scale_inv)
    if block is None:
        return out.mul_(scales.reshape(()))
    rows, cols = out.shape[-2:]
    bm, bn = block
    for i in range(scales.shape[-2]):  # one row of blocks at a time: only one row of scales is widened
        row_scales = scales[..., i : i + 1, :].repeat_interleave(bn, dim=-1)[..., :cols]
        out[..., i * bm : min(rows, (i + 1) * bm), :].mul_(row_scales)
    return out


def decode_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[.., G, 16] bytes and [.., G] exponents → [.., 32 G] float32: each byte holds two E2M1 codes, the low
    nibble first, and each group of 32 values is scaled by 2^(exponent − 127)."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    values = torch.stack((table[(blocks & 0x0F).long()], table[(blocks >> 4).long()]), dim=-1)
    values = values.reshape(*blocks.shape[:-1], blocks.shape[-1] * 2)
    values = torch.ldexp(values, (scales.to(torch.int32) - E8M0_BIAS).unsqueeze(-1))
    return values.reshape(*blocks.shape[:-2], -1)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """gpt-oss's experts: ``blocks`` [E, rows, G, 16] and ``scales`` [E, rows, G] → the weight in memory,
    [E, 32 G, rows] float32 (the stored rows are its last dimension: ``down_proj`` [E, inter, hidden] is stored by
    hidden rows of inter values). One expert at a time."""
    experts, rows, groups, _ = blocks.shape
    out = torch.empty(experts, groups * 32, rows, dtype=torch.float32)
    for expert in range(experts):
        out[expert] = decode_mxfp4(blocks[expert], scales[expert]).T
    return out

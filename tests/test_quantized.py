"""Quantized checkpoints on disk (FP8 block-scaled, MXFP4): steerfold's dequantization is transformers' own, bit
for bit, and inverts reference quantizers written from the format definitions (tests/quantcases.py)."""

from __future__ import annotations

import pytest
import torch

from quantcases import fp8_quantize, mxfp4_quantize
from steerfold.models.dequantize import dequantize_fp8, dequantize_mxfp4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape, block", [((64, 96), (32, 32)), ((3, 64, 96), (32, 32)), ((64, 96), (128, 128))])
def test_fp8_dequantization_is_transformers_own(shape, block):
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    stored, scale_inv = fp8_quantize(weight, block)
    ours = dequantize_fp8(stored, scale_inv, block)
    assert torch.equal(ours, Fp8Dequantize(None)._dequantize_one(stored, scale_inv, torch.float32))
    assert (ours - weight).norm() <= 0.05 * weight.norm()  # e4m3 keeps 3 mantissa bits


def test_fp8_partial_edge_blocks_and_e8m0_scales():
    """Block (i, j) covers rows i·bm… and columns j·bn…, also where the last block is partial (576 = 4.5 × 128,
    which transformers' loader cannot split); E8M0 bytes are powers of two, 2^(byte − 127)."""
    weight = torch.randn(576, 200, generator=torch.Generator().manual_seed(1))
    stored, scale_inv = fp8_quantize(weight, (128, 128))
    expected = stored.to(torch.float32).clone()
    for i in range(5):
        for j in range(2):
            expected[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] *= scale_inv[i, j]
    assert torch.equal(dequantize_fp8(stored, scale_inv, (128, 128)), expected)
    exponents = torch.randint(120, 130, (5, 2), dtype=torch.uint8)
    as_floats = torch.exp2(exponents.to(torch.float32) - 127)
    assert torch.equal(dequantize_fp8(stored, exponents, (128, 128)), dequantize_fp8(stored, as_floats, (128, 128)))


def test_mxfp4_dequantization_is_transformers_own():
    """Low nibble first, E8M0 bias 127, and gpt-oss's layout: stored by rows of the last dimension in memory."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    weight = torch.randn(4, 96, 64, generator=torch.Generator().manual_seed(2))  # [E, inter, hidden] like down_proj
    blocks, scales = mxfp4_quantize(weight)
    assert blocks.shape == (4, 64, 3, 16) and scales.shape == (4, 64, 3)
    ours = dequantize_mxfp4(blocks, scales)
    assert torch.equal(ours, convert_moe_packed_tensors(blocks, scales, dtype=torch.float32))
    assert ours.shape == weight.shape and (ours - weight).norm() <= 0.15 * weight.norm()  # 4 bits a value
    byte = torch.tensor([[[[0x2F] * 16]]], dtype=torch.uint8)  # low nibble 0xF = −6, high nibble 0x2 = 1
    values = dequantize_mxfp4(byte, torch.tensor([[[128]]], dtype=torch.uint8))
    assert values[0, :2, 0].tolist() == [-12.0, 2.0]

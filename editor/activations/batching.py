"""How many prompts a forward pass takes when ``--batch-size`` is not given: the most (a power of two, up to
``LARGEST``) whose working memory fits in half of what is free on the devices holding the model.

A row's working memory is estimated from the config, not measured: inside a block the widest tensors of its
tokens (residual stream, attention projections, the MLP's gate, up and activation) in the model's dtype, the
attention scores in float32, what capture keeps of it (every layer index at the candidate positions, float32)
and one position's logits (float32, with the softmax's copy). A power of two, so that small changes in free memory
rarely change the batches (and with them the float rounding of a fit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

LARGEST = 32  # the fixed default before: where memory allows, batches (and results) are as they were
HEADROOM = 0.5  # share of the free memory the batch may use


@dataclass(frozen=True)
class RowShape:
    """What one prompt's forward pass holds, in the numbers that size it."""

    hidden: int
    intermediate: int
    heads: int
    vocab: int
    layers: int  # layer indices captured
    positions: int  # positions captured
    tokens: int  # longest sequence: prompt and generated tokens
    dtype_bytes: int  # the model's activations

    def bytes(self) -> int:
        block = self.tokens * (4 * self.hidden + 3 * self.intermediate) * self.dtype_bytes
        scores = self.heads * self.tokens * self.tokens * 4
        captured = self.layers * self.positions * self.hidden * 4
        logits = 2 * self.vocab * 4
        return block + scores + captured + logits


def batch_size_for(free_bytes: int | None, row_bytes: int, largest: int = LARGEST) -> int:
    """The largest power of two ≤ ``largest`` whose rows fit in ``HEADROOM`` of ``free_bytes`` (at least 1;
    ``largest`` when the free memory is unknown)."""
    if free_bytes is None:
        return largest
    fits = min(largest, int(free_bytes * HEADROOM) // max(1, row_bytes))
    return 1 << (fits.bit_length() - 1) if fits >= 1 else 1


def free_memory(devices: set[torch.device]) -> int | None:
    """Free bytes on the fullest of ``devices`` (CUDA: the driver's count; otherwise the system's available RAM);
    None when it cannot be read."""
    free = []
    for device in devices:
        if device.type == "cuda":
            free.append(torch.cuda.mem_get_info(device)[0])
        elif device.type != "meta":  # weights offloaded to disk take no memory here
            free.append(available_ram())
    known = [f for f in free if f is not None]
    return min(known) if known else None


def available_ram(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The system's available memory in bytes: Linux's MemAvailable, else free pages (os.sysconf), else None."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def auto_batch_size(model: torch.nn.Module, tokens: int, layers: int, positions: int) -> int:
    """``batch_size_for`` the model's free memory and a row of ``tokens`` tokens capturing ``layers`` × ``positions``."""
    config = model.config.get_text_config()
    hidden = config.hidden_size
    parameter = next(model.parameters())
    shape = RowShape(hidden, getattr(config, "intermediate_size", None) or 4 * hidden,
                     getattr(config, "num_attention_heads", 1) or 1, config.vocab_size, layers, positions, tokens,
                     parameter.element_size() if parameter.is_floating_point() else 2)
    return batch_size_for(free_memory({p.device for p in model.parameters()}), shape.bytes())

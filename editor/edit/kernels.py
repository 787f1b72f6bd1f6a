"""Per-layer weight kernels: how strongly each residual writer is edited, as a function of its layer index.

A kernel is four numbers: peak layer, peak weight, minimum weight, fall-off distance. The weight at layer index
``l`` (docs/design.md: 0 = embedding output, l = output of block l-1, so the writers of block l-1 sit at l) is

    w(l) = min_weight + (peak_weight - min_weight) * max(0, 1 - |l - peak| / falloff)

peak weight at the peak, falling linearly to the minimum weight at ``|l - peak| ≥ falloff`` (with falloff 0:
peak weight at ``l == peak`` only). Attention and MLP writers each get their own kernel; the embedding (layer 0)
follows the MLP kernel, because like the MLP of a block it is the last writer of its layer index (the one that
carries a layer's offset in ``Edit.module_maps``). A role without a kernel keeps weight 1. The weights multiply
the edit's map per module (``Edit.weights``), so fold, LoRA and runtime hooks share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from editor.models.arch import Role
from editor.errors import SteerfoldError

KERNEL_FORMAT = "PEAK,PEAK_WEIGHT,MIN_WEIGHT,FALLOFF"


@dataclass(frozen=True)
class LayerKernel:
    """``w(l) = min_weight + (peak_weight - min_weight) * max(0, 1 - |l - peak| / falloff)``."""

    peak: float  # layer index of the peak (docs/design.md layer index; may be fractional)
    peak_weight: float
    min_weight: float
    falloff: float  # distance in layer indices at which the weight reaches min_weight; ≥ 0

    def __post_init__(self) -> None:
        values = (self.peak, self.peak_weight, self.min_weight, self.falloff)
        if not all(math.isfinite(v) for v in values):
            raise SteerfoldError(f"kernel {self.text()} has a value that is not a finite number: write e.g. 3,1,0,2")
        if self.falloff < 0:
            raise SteerfoldError(f"kernel {self.text()} has a negative fall-off distance: use 0 or more")

    def weight(self, layer: int) -> float:
        distance = abs(layer - self.peak)
        closeness = max(0.0, 1.0 - distance / self.falloff) if self.falloff > 0 else float(distance == 0)
        return self.min_weight + (self.peak_weight - self.min_weight) * closeness

    def text(self) -> str:
        """The kernel as its command-line value, e.g. ``12,1,0,6``."""
        return ",".join(f"{v:g}" for v in (self.peak, self.peak_weight, self.min_weight, self.falloff))

    @classmethod
    def parse(cls, text: str, flag: str = "--kernel") -> "LayerKernel":
        """Read ``PEAK,PEAK_WEIGHT,MIN_WEIGHT,FALLOFF``; anything else is one error line naming the flag."""
        try:
            values = [float(part) for part in text.split(",")]
        except ValueError:
            values = []
        if len(values) != 4:
            raise SteerfoldError(f"{flag} '{text}' is not {KERNEL_FORMAT}: write e.g. {flag} 3,1,0.2,2 (a peak at layer index 3)")
        return cls(*values)


# Which kernel weights each writer role: the embedding follows the MLP kernel (see the module docstring).
KERNEL_OF_ROLE: dict[Role, str] = {"embedding": "mlp", "attention": "attention", "mlp": "mlp"}


def kernel_weights(layers: Iterable[int], attention: LayerKernel | None, mlp: LayerKernel | None) -> dict[tuple[int, Role], float]:
    """``Edit.weights`` for the listed layer indices: one weight per (layer, role); roles without a kernel keep 1."""
    kernels = {"attention": attention, "mlp": mlp}
    weights: dict[tuple[int, Role], float] = {}
    for layer in layers:
        for role, which in KERNEL_OF_ROLE.items():
            kernel = kernels[which]
            if kernel is not None and (role == "embedding") == (layer == 0):
                weights[(layer, role)] = kernel.weight(layer)
    return weights

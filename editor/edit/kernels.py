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
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from steerfold.errors import BadInput
from steerfold.models.arch import Role

KERNEL_FORMAT = "PEAK,PEAK_WEIGHT,MIN_WEIGHT,FALLOFF"
FIELDS = ("peak", "peak_weight", "min_weight", "falloff")


class LayerKernel(BaseModel):
    """``w(l) = min_weight + (peak_weight - min_weight) * max(0, 1 - |l - peak| / falloff)``.

    Written ``LayerKernel(3, 1, 0.2, 2)``, as the command line's ``3,1,0.2,2`` or as a recipe's mapping
    ``{peak: 3, falloff: 2}`` (peak weight 1 and minimum weight 0 by default there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peak: float  # layer index of the peak (docs/design.md layer index; may be fractional)
    peak_weight: float = 1.0
    min_weight: float = 0.0
    falloff: float  # ≥ 0: distance in layer indices at which the weight reaches min_weight

    def __init__(self, *values: float, **named: Any) -> None:
        super().__init__(**dict(zip(FIELDS, values)), **named)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            values = _numbers(data)
            if values is None:
                raise ValueError(f"'{data}' is not {KERNEL_FORMAT}: write e.g. 3,1,0.2,2 (a peak at layer index 3)")
            return dict(zip(FIELDS, values))
        return data

    @field_validator("falloff")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"{value:g} is a negative fall-off distance: use 0 or more")
        return value

    @model_validator(mode="after")
    def _finite(self) -> "LayerKernel":
        if not all(math.isfinite(getattr(self, name)) for name in FIELDS):
            raise ValueError(f"kernel {self.text()} has a value that is not a finite number: write e.g. 3,1,0,2")
        return self

    def weight(self, layer: int) -> float:
        distance = abs(layer - self.peak)
        closeness = max(0.0, 1.0 - distance / self.falloff) if self.falloff > 0 else float(distance == 0)
        return self.min_weight + (self.peak_weight - self.min_weight) * closeness

    def text(self) -> str:
        """The kernel as its command-line value, e.g. ``12,1,0,6``."""
        return ",".join(f"{getattr(self, name):g}" for name in FIELDS)

    @classmethod
    def parse(cls, text: str, flag: str = "--kernel") -> "LayerKernel":
        """Read ``PEAK,PEAK_WEIGHT,MIN_WEIGHT,FALLOFF``; anything else is one error line naming the flag."""
        values = _numbers(text)
        if values is None:
            raise BadInput(f"{flag} '{text}' is not {KERNEL_FORMAT}: write e.g. {flag} 3,1,0.2,2 (a peak at layer index 3)")
        if not all(math.isfinite(v) for v in values):
            raise BadInput(f"{flag} {text}: a value is not a finite number: write e.g. 3,1,0,2")
        if values[3] < 0:
            raise BadInput(f"{flag} {text} has a negative fall-off distance: use 0 or more")
        return cls(*values)


def _numbers(text: str) -> list[float] | None:
    """Four comma-separated numbers, or None."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        return None
    return values if len(values) == 4 else None


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

"""The search space of a tune, scaled to the model's depth, and a trial's point in it as the edit it stands for.

A trial chooses the direction (fitting method, orthogonalised or not, post-instruction position, and a fractional
layer index whose direction interpolates the two neighbouring layers'), the ablation's scale, one kernel per writer
role (``editor/edit/kernels.py``: peak anywhere in the model's layer indices, peak weight 1 so the scale sets the
height, a minimum weight and a fall-off distance up to the model's depth) and norm preservation. Every range follows
from the model's layer count, so a 4-block model is searched as thoroughly as an 80-block one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from steerfold.edit.kernels import LayerKernel
from steerfold.tuning.options import TuneOptions

SCALE_RANGE = (0.5, 1.5)
ROLES = ("attention", "mlp")


@dataclass(frozen=True)
class Space:
    """What a tune may choose from: the model's layer count and the variants of the direction it fitted."""

    num_layers: int  # L: layer indices run 0..L
    methods: tuple[str, ...]
    orthogonalize: tuple[bool, ...]
    positions: tuple[int, ...]
    norm_preserving: tuple[bool, ...]

    @classmethod
    def of(cls, options: TuneOptions, num_layers: int, positions: list[int]) -> "Space":
        choice = {"search": (False, True), "on": (True,), "off": (False,)}
        wanted = [options.position] if options.position is not None else positions
        return cls(num_layers, tuple(options.method_list()), choice[options.orthogonalize], tuple(wanted),
                   choice[options.norm_preserving])


@dataclass(frozen=True)
class TrialParams:
    """One point of the space: the direction and the ablation along it."""

    method: str
    orthogonalize: bool
    position: int
    direction_layer: float  # fractional layer index: interpolates the directions of its two neighbours
    scale: float
    attention_peak: float
    attention_min: float
    attention_falloff: float
    mlp_peak: float
    mlp_min: float
    mlp_falloff: float
    norm_preserving: bool

    def kernel(self, role: str) -> LayerKernel:
        """The role's kernel: peak weight 1 (the scale sets the height), its minimum weight and fall-off."""
        return LayerKernel(getattr(self, f"{role}_peak"), 1.0, getattr(self, f"{role}_min"), getattr(self, f"{role}_falloff"))

    def edit_values(self) -> dict[str, Any]:
        """The ``EditSpec`` fields of this trial's edit (its direction file aside)."""
        return {"kind": "ablation", "scale": self.scale, "attention_kernel": self.kernel("attention"),
                "mlp_kernel": self.kernel("mlp"), "norm_preserving": self.norm_preserving}

    def variant(self) -> str:
        """The name of the fitted direction variant this trial reads."""
        return variant_name(self.method, self.orthogonalize)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def variant_name(method: str, orthogonalize: bool) -> str:
    return f"{method}+orthogonal" if orthogonalize else method


DECIMALS = 3  # every number of a trial is rounded so that its command line (``%g``) states it exactly


def suggest(trial, space: Space) -> TrialParams:
    """Ask an optuna trial for a point of ``space`` (a choice with one option is fixed, not searched)."""
    last = space.num_layers
    values: dict[str, Any] = {
        "method": _choose(trial, "method", space.methods),
        "orthogonalize": _choose(trial, "orthogonalize", space.orthogonalize),
        "position": _choose(trial, "position", space.positions),
        "direction_layer": trial.suggest_float("direction_layer", 1.0, float(last)),
        "scale": trial.suggest_float("scale", *SCALE_RANGE),
        "norm_preserving": _choose(trial, "norm_preserving", space.norm_preserving),
    }
    for role in ROLES:
        values[f"{role}_peak"] = trial.suggest_float(f"{role}_peak", 0.0, float(last))
        values[f"{role}_min"] = trial.suggest_float(f"{role}_min", 0.0, 1.0)
        values[f"{role}_falloff"] = trial.suggest_float(f"{role}_falloff", 1.0, float(max(last, 1)))
    return TrialParams(**{k: round(v, DECIMALS) if isinstance(v, float) else v for k, v in values.items()})


def _choose(trial, name: str, options: tuple) -> Any:
    return options[0] if len(options) == 1 else trial.suggest_categorical(name, list(options))


def params_of(values: dict[str, Any]) -> TrialParams:
    """A ``TrialParams`` back from its dictionary (trials.jsonl)."""
    return TrialParams(**values)

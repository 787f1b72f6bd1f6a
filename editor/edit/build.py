"""Building the edit an ``EditSpec`` describes: the direction (and condition) file checked against
the model, the layers and kernel weights, one builder per edit kind. Imports torch, so ``run_edit`` loads it only
once the shards are being copied."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from steerfold.models.arch import ModelLayout, Role
from steerfold.directions.file import DirectionFile, check_hidden_size, load_direction_file
from steerfold.edit.edits import Edit, ablation_edit, conditional_edit, steering_edit, subspace_edit
from steerfold.errors import BadInput, SteerfoldError
from steerfold.edit.kernels import kernel_weights
from steerfold.edit.spec import EditSpec, parse_layers
from steerfold.edit.norm_preserving import norm_preserving_edit


def edit_layers(spec: EditSpec, layout: ModelLayout, source_layer: int | None) -> list[int]:
    """The layer indices to edit: --layers, or all of them (steering: the layer the direction was fitted at)."""
    if spec.kind == "steering" and spec.layers is None:
        if source_layer is None:
            raise BadInput("the direction file records no layer to steer at: pass --layers (e.g. --layers 4)")
        layers = [source_layer]
    else:
        layers = parse_layers(spec.layers, layout.num_layers)
    if not spec.embedding:
        layers = [layer for layer in layers if layer != 0]
    if not layers:
        raise BadInput("no layer left to edit: widen --layers or drop --no-embedding")
    return layers


def check_kernel_peaks(spec: EditSpec, layout: ModelLayout) -> None:
    """Refuse a kernel whose peak lies outside the model's layer indices: every writer would get its fall-off."""
    last = layout.num_layers
    for flag, kernel in (("--attention-kernel", spec.attention_kernel), ("--mlp-kernel", spec.mlp_kernel)):
        if kernel is not None and not 0 <= kernel.peak <= last:
            example = f"{round(0.6 * last)},{kernel.peak_weight:g},{kernel.min_weight:g},{max(1, round(last / 3))}"
            raise BadInput(f"{flag} peaks at layer index {kernel.peak:g}, outside this model's layer indices 0..{last} "
                                 f"(0 = embedding output, l = output of block l-1): choose a peak in 0..{last}, e.g. "
                                 f"{flag} {example}, or pass --allow-noop if you mean it")


def _checked_file(path: Path, layout: ModelLayout) -> DirectionFile:
    """A direction file whose vectors fit the model's hidden size and layer count."""
    file = load_direction_file(path)
    check_hidden_size(file, layout.hidden_size, layout.num_layers, path)
    return file


def _condition_vector(spec: EditSpec, layout: ModelLayout) -> torch.Tensor:
    """The condition direction c: a row of a per-layer file is picked like the direction's (--layer or recorded)."""
    assert spec.condition is not None
    file = _checked_file(spec.condition, layout)
    which = f"the condition file {spec.condition}"
    if spec.condition_category is not None:
        return _category_row(file, spec.condition_category, spec.layer, which)
    return _select(file, spec.layer if file.directions is not None else None, which)[0]


def _category_row(file: DirectionFile, category: str, layer: int | None, which: str) -> torch.Tensor:
    """One harm category's direction (``directions.<category>`` of a per-category file) at layer index ``layer``."""
    if category not in file.categories:
        known = ", ".join(sorted(file.categories)) or "none: fit it with --method per-category"
        raise BadInput(f"{which} has no category '{category}' (categories: {known}): pass one of them to --condition-category")
    if layer is None:
        raise BadInput(f"{which}: a category's directions are per layer and record no chosen layer: pass --layer N "
                             "(layer index: 0 = embedding output, N = output of block N-1)")
    rows = file.categories[category]
    if not 0 <= layer < rows.shape[0]:
        raise BadInput(f"--layer {layer} is out of range: {which} has rows 0..{rows.shape[0] - 1}")
    return rows[layer]


def _select(file: DirectionFile, layer: int | None, which: str) -> tuple[torch.Tensor, int | None]:
    """``file.select``, with its errors naming which of the edit's files they are about."""
    try:
        return file.select(layer)
    except SteerfoldError as exc:
        raise BadInput(f"{which}: {exc}") from None


def _basis(spec: EditSpec, file: DirectionFile) -> torch.Tensor:
    """The orthonormal ``basis`` [k, hidden] of the direction file (written by ``steerfold fit --method inlp``)."""
    if file.basis is None:
        raise BadInput(f"{spec.direction} holds no basis to remove: fit one with --method inlp (or pca --pca-components 2+), or drop --subspace")
    return file.basis


Weights = dict[tuple[int, Role], float]
# One builder per edit kind: (spec, layout, direction file, its direction vector, layers, per-module weights) → Edit.
BUILDERS: dict[str, Callable[[EditSpec, ModelLayout, DirectionFile, torch.Tensor, list[int], Weights], Edit]] = {
    "ablation": lambda r, layout, f, v, layers, w: ablation_edit(v, layers, r.scale, r.tied_embedding, w),
    "steering": lambda r, layout, f, v, layers, w: replace(steering_edit(v, layers, r.strength), tied_embedding=r.tied_embedding),
    "subspace": lambda r, layout, f, v, layers, w: subspace_edit(_basis(r, f), layers, r.tied_embedding, w),
    "conditional": lambda r, layout, f, v, layers, w: conditional_edit(_condition_vector(r, layout), v, layers, r.alpha,
                                                                    r.tied_embedding, w),
}


def build_edit(spec: EditSpec, layout: ModelLayout) -> tuple[Edit, int | None, dict[str, str]]:
    """Load and check the direction (and condition), then build the edit the spec describes."""
    direction_file = _checked_file(spec.direction, layout)
    vector, source_layer = _select(direction_file, spec.layer, f"the direction file {spec.direction}")
    layers = edit_layers(spec, layout, source_layer)
    if not spec.allow_noop:
        check_kernel_peaks(spec, layout)
    weights = kernel_weights(layers, spec.attention_kernel, spec.mlp_kernel)
    edit = BUILDERS[spec.kind](spec, layout, direction_file, vector, layers, weights)
    edit.check_changes_something(layout, spec.allow_noop)
    if spec.norm_preserving:
        edit = norm_preserving_edit(edit)
    return edit, source_layer, direction_file.metadata

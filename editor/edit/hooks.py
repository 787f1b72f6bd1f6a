"""The runtime face of an edit: forward hooks that apply the map to what each residual writer outputs. The
reference every fold is tested against, and what validation and the studies run."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from steerfold.edit.edits import Edit, check_write_maps
from steerfold.edit.fold import gain_reader
from steerfold.edit.maps import ResidualMap
from steerfold.models.arch import ModelLayout, layout_of_model


@contextmanager
def runtime_hooks(model: torch.nn.Module, edit: Edit) -> Iterator[ModelLayout]:
    """Apply the edit at run time with forward hooks on each residual writer (the reference for folds).

    With ``tied_embedding="shared"`` the output head is edited too, as the shared fold does.
    """
    layout = layout_of_model(model)
    module_maps = edit.module_maps(layout, gain_reader(model))
    check_write_maps(module_maps, "runtime hooks")
    handles = []
    for module_name, residual_map in module_maps.items():
        handles.append(model.get_submodule(module_name).register_forward_hook(_output_hook(residual_map)))
    if edit.edits_embedding() and layout.tied_embeddings and edit.tied_embedding == "shared":
        handles.append(model.get_submodule(layout.lm_head).register_forward_pre_hook(
            _shared_head_hook(module_maps[layout.embedding.hook])))
    try:
        yield layout
    finally:
        for handle in handles:
            handle.remove()


def _output_hook(residual_map: ResidualMap) -> Callable:
    def hook(_module: torch.nn.Module, _inputs: tuple, output):
        if isinstance(output, tuple):
            return (residual_map.apply(output[0]), *output[1:])
        return residual_map.apply(output)

    return hook


def _shared_head_hook(residual_map: ResidualMap) -> Callable:
    """logits = E' h with E' = E (I + V Uᵀ) equal E (h + V (Uᵀ h)): apply that to the head's input."""

    def hook(_module: torch.nn.Module, inputs: tuple) -> tuple:
        h = inputs[0]
        x = h.to(torch.float32)
        out = x + (x @ residual_map.U.to(x.device)) @ residual_map.V.T.to(x.device)
        return (out.to(h.dtype), *inputs[1:])

    return hook

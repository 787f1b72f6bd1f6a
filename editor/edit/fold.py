"""The fold face of an edit: the map folded into the weights (``W ← (I + U Vᵀ) W``, ``β ← (I + U Vᵀ) β + b``,
embedding rows ``E ← E (I + V Uᵀ) + b``), computed in float32 and written back in the tensor's dtype: one tensor at a
time for a streamed export, or a loaded model in place."""

from __future__ import annotations

from typing import Callable

import torch

from steerfold.edit.edits import Edit
from steerfold.edit.maps import ResidualMap
from steerfold.models.arch import ModelLayout, TensorKind, layout_of_model


def fold_tensor(key: str, tensor: torch.Tensor, layout: ModelLayout, module_maps: dict[str, ResidualMap],
                out: torch.Tensor | None = None) -> torch.Tensor:
    """The edited version of one tensor (unchanged when the edit does not touch it). With ``out`` (same shape and
    dtype) the fold may be written there, so a streamed export can reuse a few buffers instead of touching fresh
    memory; use the return value either way (a bias fold returns a new tensor)."""
    found = layout.writer_of_key(key)
    if found is None:
        return tensor
    writer, kind = found
    residual_map = module_maps.get(writer.hook)
    if residual_map is None:
        return tensor
    if kind == "embedding":
        return residual_map.scaled_offset(writer.weight_scale).fold_embedding(tensor, out)
    if kind == "bias":  # [hidden], or gpt-oss's [E, hidden] expert biases: every row gets the offset
        return residual_map.fold_bias(tensor)
    if kind == "linear":
        return residual_map.fold_linear_weight(tensor, out)
    return _fold_experts(kind, tensor, residual_map.linear_part(), out)


def _fold_experts(kind: TensorKind, tensor: torch.Tensor, linear: ResidualMap, out: torch.Tensor | None) -> torch.Tensor:
    """Fold the linear part of a map into each expert of a fused tensor (docs/design.md's ``TensorKind`` list)."""
    out = torch.empty_like(tensor) if out is None else out
    for expert, expert_out in zip(tensor, out):
        if kind == "experts":  # [hidden, inter]: a linear writer's weight
            linear.fold_linear_weight(expert, expert_out)
        else:  # experts_t, [inter, hidden]: x @ W, so each row is a residual vector, folded like embedding rows
            linear.fold_embedding(expert, expert_out)
    return out


def _untie_output_head(model: torch.nn.Module, layout: ModelLayout) -> None:
    """Give the output head its own copy of the embedding matrix so editing the embedding leaves it alone."""
    head = model.get_submodule(layout.lm_head)
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", lambda: None)()
    if text_config is not None:
        text_config.tie_word_embeddings = False


def gain_reader(model: torch.nn.Module) -> Callable[[str], torch.Tensor]:
    return lambda key: model.get_parameter(key).detach()


@torch.no_grad()
def fold_model(model: torch.nn.Module, edit: Edit) -> ModelLayout:
    """Fold an edit into a loaded transformers model in place; returns the layout it used."""
    layout = layout_of_model(model)
    edit.check_foldable(layout)
    module_maps = edit.module_maps(layout, gain_reader(model))
    if edit.edits_embedding() and layout.tied_embeddings and edit.tied_embedding == "untie":
        _untie_output_head(model, layout)
    for writer in layout.writers:
        if writer.hook not in module_maps:
            continue
        for key in [k for k, _ in writer.tensors] + ([writer.bias] if writer.bias else []):
            param = model.get_parameter(key)
            param.copy_(fold_tensor(key, param.data, layout, module_maps))
    return layout

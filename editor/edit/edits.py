"""The edit algebra: which residual map (``editor.edit.maps``, ``w ↦ (I + U Vᵀ) w + b``) applies to what each
module writes into the residual stream.

Three faces of one edit, all driven by the same per-module maps (``Edit.module_maps``):

- ``fold_tensor`` / ``fold_model``: fold the map into the weights (``W ← (I + U Vᵀ) W``, ``β ← (I + U Vᵀ) β + b``,
  embedding rows ``E ← E (I + V Uᵀ) + b``), computed in float32 and written back in the tensor's dtype;
- ``lora_pair``: the same change as a LoRA, ``lora_B = U``, ``lora_A = Vᵀ W`` (``lora_alpha = r``);
- ``runtime_hooks``: forward hooks applying the map to each module's output, the reference every fold is
  tested against.

An edit may scale each module's map (``Edit.weights``, e.g. the layer kernels of ``editor.edit.kernels``); a map that
only a weight fold can express (``editor.edit.norm_preserving``) says so, and LoRA and hooks refuse it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Mapping

import torch

from editor.models.arch import ModelLayout, Role, layout_of_model
from editor.errors import SteerfoldError
from editor.edit.maps import ResidualMap, ablation_map, conditional_map

TiedEmbeddingMode = Literal["untie", "shared"]


NOTHING_CHANGED = "the edit changes no residual writer: widen --layers or raise the kernel weights above 0"


@dataclass(frozen=True)
class Edit:
    """One residual map per docs/design.md layer index; index 0 (the embedding) is edited only if present.

    ``tied_embedding`` decides what happens when the embedding is edited on a model whose output head shares
    the embedding matrix: ``untie`` gives the head its own unedited copy (exactly the runtime edit), ``shared``
    edits the one matrix, so the output head changes too.
    """

    maps: dict[int, ResidualMap]
    tied_embedding: TiedEmbeddingMode = "untie"
    # Per-module scale by (layer index, writer role), 1 where absent: each writer gets ``maps[layer].scaled(w)``;
    # a weight of 0 leaves that writer untouched (see ``editor.edit.kernels`` for per-layer kernels).
    weights: Mapping[tuple[int, Role], float] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.maps)

    def weight(self, layer: int, role: Role) -> float:
        return self.weights.get((layer, role), 1.0)

    def edits_embedding(self) -> bool:
        return 0 in self.maps and self.weight(0, "embedding") != 0

    def module_maps(self, layout: ModelLayout, gain_of: Callable[[str], torch.Tensor] | None = None) -> dict[str, ResidualMap]:
        """The map each residual writer's hook module output gets, keyed by that module's name.

        Each writer's map is scaled by its weight (``weights``); writers whose map changes nothing are left out.
        A layer's offset is carried by its last writer only, divided by the scalar the model multiplies that
        output by. Post-norm writers get the ablation re-expressed against ``g ⊙ r``; ``gain_of`` reads the
        post-norm weights (needed only on post-norm architectures).
        """
        self.check_against(layout)
        offset = layout.architecture.norm_gain_offset
        per_module: dict[str, ResidualMap] = {}
        for layer, layer_map in self.maps.items():
            writers = layout.writers_at([layer])
            for i, writer in enumerate(writers):
                residual_map = layer_map.scaled(self.weight(layer, writer.role))
                carries_offset = residual_map.b is not None and i == len(writers) - 1
                mapped = residual_map.scaled_offset(writer.stream_scale) if carries_offset else residual_map.linear_part()
                if mapped.is_identity:
                    continue
                if writer.post_norm:
                    if mapped.b is not None:
                        raise SteerfoldError(
                            f"a constant offset cannot pass through the post-norm of {writer.hook}: "
                            "steer a pre-norm architecture, or use an ablation here"
                        )
                    if gain_of is None:
                        raise ValueError("post-norm writers need gain_of to read their norm weights")
                    mapped = mapped.through_gain(gain_of(writer.post_norm).to(torch.float32) + offset)
                per_module[writer.hook] = mapped
        if not per_module:
            raise SteerfoldError(NOTHING_CHANGED)
        return per_module

    def check_changes_something(self, layout: ModelLayout, allow_noop: bool = False) -> None:
        """Refuse an edit that leaves every writer as it is, or changes each by a negligible amount (e.g. kernel
        weights of 0 at every listed layer, or a scale of 1e-6); ``allow_noop`` accepts a negligible one."""
        scaled = [m.scaled(self.weight(layer, w.role)) for layer, m in self.maps.items() for w in layout.writers_at([layer])]
        if all(m.is_identity for m in scaled):
            raise SteerfoldError(NOTHING_CHANGED)
        if not allow_noop and all(m.is_negligible for m in scaled):
            raise SteerfoldError(NOTHING_CHANGED.replace(": ", " measurably: ", 1) + ", or pass --allow-noop if you mean it")

    def check_against(self, layout: ModelLayout) -> None:
        """Refuse layer indices out of range and maps of the wrong size."""
        for layer, residual_map in self.maps.items():
            if not 0 <= layer <= layout.num_layers:
                raise SteerfoldError(
                    f"layer index {layer} is out of range: this model has layer indices 0..{layout.num_layers} "
                    "(0 = embedding output, l = output of block l-1)"
                )
            if residual_map.U.shape[0] != layout.hidden_size:
                raise SteerfoldError(
                    f"the edit has size {residual_map.U.shape[0]} but the model's hidden size is {layout.hidden_size}: "
                    "use a direction fitted on this model"
                )

    def check_foldable(self, layout: ModelLayout) -> None:
        """Refuse constant offsets that the weights cannot carry (hooks can add them anywhere; folds need a bias)."""
        self.check_against(layout)
        for layer, residual_map in self.maps.items():
            if residual_map.b is None:
                continue
            if layer == 0 and layout.tied_embeddings and self.tied_embedding == "shared":
                raise SteerfoldError(
                    "a constant offset on a shared (tied) embedding would also shift every logit: "
                    "use --tied-embedding untie"
                )
            last = layout.writers_at([layer])[-1]
            if layer > 0 and not last.has_bias:
                raise SteerfoldError(
                    f"a constant offset at layer {layer} needs a bias on {last.hook}, which this checkpoint "
                    "does not have: export it as a control vector (--format cvec) or apply it at run time instead"
                )


def steering_edit(vector: torch.Tensor, layers: Iterable[int], coefficient: float = 1.0) -> Edit:
    """Add ``coefficient * vector`` to the residual stream at each listed layer index (activation addition)."""
    v = vector.detach().to(torch.float32).reshape(-1)
    zeros = v.new_zeros(v.shape[0], 1)
    return _at_layers(ResidualMap(U=zeros, V=zeros.clone(), b=coefficient * v), layers)


def _at_layers(residual_map: ResidualMap, layers: Iterable[int], tied_embedding: TiedEmbeddingMode = "untie",
               weights: Mapping[tuple[int, Role], float] | None = None) -> Edit:
    """One map for the writers of every listed layer index."""
    return Edit({layer: residual_map for layer in sorted(set(layers))}, tied_embedding, dict(weights or {}))


def ablation_edit(
    direction: torch.Tensor,
    layers: Iterable[int],
    scale: float = 1.0,
    tied_embedding: TiedEmbeddingMode = "untie",
    weights: Mapping[tuple[int, Role], float] | None = None,
) -> Edit:
    """Ablate one direction from the writers of every listed layer index (``weights`` scale λ per module)."""
    return _at_layers(ablation_map(direction, scale), layers, tied_embedding, weights)


def conditional_edit(
    condition: torch.Tensor,
    target: torch.Tensor,
    layers: Iterable[int],
    alpha: float = 1.0,
    tied_embedding: TiedEmbeddingMode = "untie",
    weights: Mapping[tuple[int, Role], float] | None = None,
) -> Edit:
    """Apply ``w ↦ w + α r̂ (ĉ · w)`` to the writers of every listed layer index (see ``conditional_map``)."""
    return _at_layers(conditional_map(condition, target, alpha), layers, tied_embedding, weights)


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
    if kind == "bias":
        return residual_map.fold_bias(tensor)
    if kind == "experts":  # fused [E, hidden, inter]: each expert's down projection is a writer
        out = torch.empty_like(tensor) if out is None else out
        for expert, expert_out in zip(tensor, out):
            residual_map.fold_linear_weight(expert, expert_out)
        return out
    return residual_map.fold_linear_weight(tensor, out)


def _untie_output_head(model: torch.nn.Module, layout: ModelLayout) -> None:
    """Give the output head its own copy of the embedding matrix so editing the embedding leaves it alone."""
    head = model.get_submodule(layout.architecture.lm_head)
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", lambda: None)()
    if text_config is not None:
        text_config.tie_word_embeddings = False


def _gain_reader(model: torch.nn.Module) -> Callable[[str], torch.Tensor]:
    return lambda key: model.get_parameter(key).detach()


@torch.no_grad()
def fold_model(model: torch.nn.Module, edit: Edit) -> ModelLayout:
    """Fold an edit into a loaded transformers model in place; returns the layout it used."""
    layout = layout_of_model(model)
    edit.check_foldable(layout)
    module_maps = edit.module_maps(layout, _gain_reader(model))
    if edit.edits_embedding() and layout.tied_embeddings and edit.tied_embedding == "untie":
        _untie_output_head(model, layout)
    for writer in layout.writers:
        if writer.hook not in module_maps:
            continue
        for key in [k for k, _ in writer.tensors] + ([writer.bias] if writer.bias else []):
            param = model.get_parameter(key)
            param.copy_(fold_tensor(key, param.data, layout, module_maps))
    return layout


@contextmanager
def runtime_hooks(model: torch.nn.Module, edit: Edit) -> Iterator[ModelLayout]:
    """Apply the edit at run time with forward hooks on each residual writer (the reference for folds).

    With ``tied_embedding="shared"`` the output head is edited too, as the shared fold does.
    """
    layout = layout_of_model(model)
    module_maps = edit.module_maps(layout, _gain_reader(model))
    check_write_maps(module_maps, "runtime hooks")
    handles = []
    for module_name, residual_map in module_maps.items():
        handles.append(model.get_submodule(module_name).register_forward_hook(_output_hook(residual_map)))
    if edit.edits_embedding() and layout.tied_embeddings and edit.tied_embedding == "shared":
        handles.append(model.get_submodule(layout.architecture.lm_head).register_forward_pre_hook(
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
        out = x + (x @ residual_map.U) @ residual_map.V.T
        return (out.to(h.dtype), *inputs[1:])

    return hook


def check_write_maps(module_maps: dict[str, ResidualMap], face: str) -> None:
    """Refuse maps that are not ``(I + U Vᵀ)`` on the module's output: a LoRA and runtime hooks carry only those."""
    for residual_map in module_maps.values():
        if residual_map.not_a_write_map:
            raise SteerfoldError(f"{residual_map.not_a_write_map}, so {face} cannot carry it exactly: "
                                 "fold it into a merged checkpoint (--format merged)")


def lora_rank(module_maps: dict[str, ResidualMap]) -> int:
    """The uniform LoRA rank of an edit; refuses maps a LoRA cannot carry (constant offsets, weight-only folds)."""
    check_write_maps(module_maps, "a LoRA adapter")
    for module_name, residual_map in module_maps.items():
        if residual_map.b is not None:
            raise SteerfoldError(
                f"a LoRA cannot carry the constant offset on {module_name}: export a merged checkpoint or a control vector"
            )
    return max(m.rank for m in module_maps.values())


def lora_pair(residual_map: ResidualMap, weight: torch.Tensor, embedding: bool, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lora_A, lora_B)`` in float32 for one module, padded with zeros to the uniform ``rank``.

    Linear writers: ``lora_B = U`` [d, k], ``lora_A = Vᵀ W`` [k, in]. The embedding: PEFT's
    ``lora_embedding_A`` [k, vocab] is ``(E V)ᵀ`` and ``lora_embedding_B`` [d, k] is ``U``. Where the embedding
    module scales its rows (Gemma's √d), PEFT ≥ 0.18 scales the adapter's output the same way.
    """
    U, V = _pad_rank(residual_map.U, rank), _pad_rank(residual_map.V, rank)
    w = weight.to(torch.float32)
    lora_a = (w @ V).T if embedding else V.T @ w
    return lora_a.contiguous(), U.clone().contiguous()


def _pad_rank(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    if matrix.shape[1] == rank:
        return matrix
    return torch.cat([matrix, matrix.new_zeros(matrix.shape[0], rank - matrix.shape[1])], dim=1)

"""The edit algebra: which residual map (``editor.edit.maps``, ``w ↦ (I + U Vᵀ) w + b``) applies to what each
module writes into the residual stream.

Three faces of one edit, all driven by the same per-module maps (``Edit.module_maps``), each a module of this
package:

- ``fold`` (``fold_tensor``, ``fold_model``): fold the map into the weights (``W ← (I + U Vᵀ) W``, ``β ← (I + U Vᵀ) β + b``,
  embedding rows ``E ← E (I + V Uᵀ) + b``), computed in float32 and written back in the tensor's dtype;
- ``lora`` (``lora_pair``): the same change as a LoRA, ``lora_B = U``, ``lora_A = Vᵀ W`` (``lora_alpha = r``);
- ``hooks`` (``runtime_hooks``): forward hooks applying the map to each module's output, the reference every fold is
  tested against.

An edit may scale each module's map (``Edit.weights``, e.g. the layer kernels of ``editor.edit.kernels``); a map that
only a weight fold can express (``editor.edit.norm_preserving``) says so, and LoRA and hooks refuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Mapping

import torch

from steerfold.models.arch import ModelLayout, Role
from steerfold.errors import BadInput
from steerfold.edit.maps import ResidualMap, ablation_map, conditional_map, subspace_ablation_map

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
                if writer.post_norms:
                    if mapped.b is not None:
                        raise BadInput(
                            f"a constant offset cannot pass through the post-norm of {writer.hook}: "
                            "steer a pre-norm architecture, or use an ablation here"
                        )
                    if gain_of is None:
                        raise ValueError("post-norm writers need gain_of to read their norm weights")
                    mapped = mapped.through_gain(_gain(writer.post_norms, gain_of, offset))
                per_module[writer.hook] = mapped
        if not per_module:
            raise BadInput(NOTHING_CHANGED)
        return per_module

    def check_changes_something(self, layout: ModelLayout, allow_noop: bool = False) -> None:
        """Refuse an edit that leaves every writer as it is, or changes each by a negligible amount (e.g. kernel
        weights of 0 at every listed layer, or a scale of 1e-6); ``allow_noop`` accepts a negligible one."""
        scaled = [m.scaled(self.weight(layer, w.role)) for layer, m in self.maps.items() for w in layout.writers_at([layer])]
        if all(m.is_identity for m in scaled):
            raise BadInput(NOTHING_CHANGED)
        if not allow_noop and all(m.is_negligible for m in scaled):
            raise BadInput(NOTHING_CHANGED.replace(": ", " measurably: ", 1) + ", or pass --allow-noop if you mean it")

    def check_against(self, layout: ModelLayout) -> None:
        """Refuse layer indices out of range and maps of the wrong size."""
        for layer, residual_map in self.maps.items():
            if not 0 <= layer <= layout.num_layers:
                raise BadInput(
                    f"layer index {layer} is out of range: this model has layer indices 0..{layout.num_layers} "
                    "(0 = embedding output, l = output of block l-1)"
                )
            if residual_map.U.shape[0] != layout.hidden_size:
                raise BadInput(
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
                raise BadInput(
                    "a constant offset on a shared (tied) embedding would also shift every logit: "
                    "use --tied-embedding untie"
                )
            last = layout.writers_at([layer])[-1]
            if layer > 0 and not last.has_bias:
                raise BadInput(
                    f"a constant offset at layer {layer} needs a bias on {last.hook}, which this checkpoint "
                    "does not have: export it as a control vector (--format cvec) or apply it at run time instead"
                )


def _gain(post_norms: tuple[str, ...], gain_of: Callable[[str], torch.Tensor], offset: float) -> torch.Tensor:
    """The gain a write passes through on its way to the stream: the product of its post-norms' gains (a norm
    rescales by a positive scalar, so a component that is zero before stays zero)."""
    gain = gain_of(post_norms[0]).to(torch.float32) + offset
    for norm in post_norms[1:]:
        gain = gain * (gain_of(norm).to(torch.float32) + offset)
    return gain


def steering_edit(vector: torch.Tensor, layers: Iterable[int], coefficient: float = 1.0) -> Edit:
    """Add ``coefficient * vector`` to the residual stream at each listed layer index (activation addition)."""
    v = vector.detach().to(torch.float32).reshape(-1)
    zeros = v.new_zeros(v.shape[0], 1)
    offset = ResidualMap(U=zeros, V=zeros.clone(), b=coefficient * v)
    return _at_layers(lambda _layer: offset, layers)


def _at_layers(make: Callable[[int], ResidualMap], layers: Iterable[int], tied_embedding: TiedEmbeddingMode = "untie",
               weights: Mapping[tuple[int, Role], float] | None = None) -> Edit:
    """The map ``make(layer)`` for the writers of every listed layer index."""
    return Edit({layer: make(layer) for layer in sorted(set(layers))}, tied_embedding, dict(weights or {}))


def _rows(vectors: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """One vector [d] for every layer index, or each layer index's own row of [L+1, d]."""
    return (lambda layer: vectors[layer]) if vectors.dim() == 2 else (lambda _layer: vectors)


def ablation_edit(
    direction: torch.Tensor,
    layers: Iterable[int],
    scale: float = 1.0,
    tied_embedding: TiedEmbeddingMode = "untie",
    weights: Mapping[tuple[int, Role], float] | None = None,
) -> Edit:
    """Ablate a direction from the writers of every listed layer index: one [d] for all, or [L+1, d] with a row per
    layer index (``weights`` scale λ per module)."""
    if direction.dim() == 1:
        same = ablation_map(direction, scale)
        return _at_layers(lambda _layer: same, layers, tied_embedding, weights)
    return _at_layers(lambda layer: ablation_map(direction[layer], scale), layers, tied_embedding, weights)


def conditional_edit(
    condition: torch.Tensor,
    target: torch.Tensor,
    layers: Iterable[int],
    alpha: float = 1.0,
    tied_embedding: TiedEmbeddingMode = "untie",
    weights: Mapping[tuple[int, Role], float] | None = None,
) -> Edit:
    """Apply ``w ↦ w + α r̂ (ĉ · w)`` to the writers of every listed layer index (see ``conditional_map``); the
    condition and the target are [d], or [L+1, d] with a row per layer index."""
    c, r = _rows(condition), _rows(target)
    return _at_layers(lambda layer: conditional_map(c(layer), r(layer), alpha), layers, tied_embedding, weights)


def subspace_edit(basis: torch.Tensor, layers: Iterable[int], tied_embedding: TiedEmbeddingMode = "untie",
                  weights: Mapping[tuple[int, Role], float] | None = None) -> Edit:
    """Remove span(``basis`` [k, d]) from the writers of every listed layer index (INLP's nullspace projection,
    ``subspace_ablation_map``); ``weights`` scale the removal per module (layer kernels)."""
    removal = subspace_ablation_map(basis.T)
    return _at_layers(lambda _layer: removal, layers, tied_embedding, weights)


def counterfactual_edit(direction: torch.Tensor, layers: Iterable[int], tied_embedding: TiedEmbeddingMode = "untie") -> Edit:
    """Reflect every listed layer's writes across the hyperplane through 0 orthogonal to ``direction`` (INLP's
    counterfactual flip: an ablation at scale 2)."""
    return ablation_edit(direction, layers, scale=2.0, tied_embedding=tied_embedding)


def check_write_maps(module_maps: dict[str, ResidualMap], face: str) -> None:
    """Refuse maps that are not ``(I + U Vᵀ)`` on the module's output: a LoRA and runtime hooks carry only those."""
    for residual_map in module_maps.values():
        if residual_map.not_a_write_map:
            raise BadInput(f"{residual_map.not_a_write_map}, so {face} cannot carry it exactly: "
                                 "fold it into a merged checkpoint (--format merged)")

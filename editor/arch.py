"""Which tensors write into the residual stream, per model family, as data.

Adding an architecture is adding a row to ``ARCHITECTURES``. Layer indices follow DESIGN.md: index 0 is
the embedding output, index ``l`` is the output of decoder block ``l - 1``; the writers of block ``l - 1``
therefore belong to layer index ``l``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from editor.errors import SteerfoldError

Role = Literal["embedding", "attention", "mlp"]


@dataclass(frozen=True)
class Architecture:
    """Where one model family writes into the residual stream (module paths as in the state dict)."""

    embedding: str = "model.embed_tokens"
    blocks: str = "model.layers"
    writers: tuple[tuple[Role, str], ...] = (("attention", "self_attn.o_proj"), ("mlp", "mlp.down_proj"))
    lm_head: str = "lm_head"
    # Config attributes holding scalars the forward pass multiplies a write by before the residual add.
    embedding_multiplier: str | None = None
    residual_multiplier: str | None = None


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(),
    "mistral": Architecture(),
    "qwen2": Architecture(),
    "qwen3": Architecture(),
    "phi3": Architecture(),
    "granite": Architecture(embedding_multiplier="embedding_multiplier", residual_multiplier="residual_multiplier"),
}


@dataclass(frozen=True)
class ResidualWriter:
    """One module whose output is added to the residual stream."""

    layer: int  # DESIGN.md layer index: 0 = embedding, l = block l - 1
    module: str  # e.g. "model.layers.3.mlp.down_proj"
    role: Role
    has_bias: bool
    multiplier: float  # scalar applied to the module's output before it reaches the stream


@dataclass(frozen=True)
class ModelLayout:
    """An architecture resolved against one model's config and parameter names."""

    model_type: str
    architecture: Architecture
    num_layers: int
    hidden_size: int
    tied_embeddings: bool
    has_lm_head_tensor: bool
    writers: tuple[ResidualWriter, ...]
    _by_module: dict[str, ResidualWriter] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_module.update({w.module: w for w in self.writers})

    @property
    def embedding(self) -> ResidualWriter:
        return self.writers[0]

    def writer(self, module: str) -> ResidualWriter | None:
        return self._by_module.get(module)

    def writers_at(self, layers: Iterable[int]) -> list[ResidualWriter]:
        wanted = set(layers)
        return [w for w in self.writers if w.layer in wanted]

    def writer_of_key(self, key: str) -> tuple[ResidualWriter, str] | None:
        """Map a state-dict key like ``model.layers.0.mlp.down_proj.weight`` to (writer, "weight"|"bias")."""
        module, _, leaf = key.rpartition(".")
        writer = self._by_module.get(module)
        if writer is None or leaf not in ("weight", "bias"):
            return None
        return writer, leaf


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def architecture_for(model_type: str) -> Architecture:
    """The table row for a model type, or a clear error listing what is supported."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise SteerfoldError(
            f"model_type '{model_type}' is not supported yet (supported: {', '.join(supported_model_types())}); "
            "open an issue with the model's config.json to add it"
        ) from None


def _config_value(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def resolve_layout(config: Any, parameter_names: Iterable[str], tied_default: bool = False) -> ModelLayout:
    """Resolve the residual writers of a model from its config (dict or PretrainedConfig) and tensor names."""
    model_type = _config_value(config, "model_type")
    arch = architecture_for(str(model_type))
    num_layers = int(_config_value(config, "num_hidden_layers"))
    hidden_size = int(_config_value(config, "hidden_size"))
    names = set(parameter_names)
    tied = bool(_config_value(config, "tie_word_embeddings", tied_default))
    emb_mult = float(_config_value(config, arch.embedding_multiplier, 1.0)) if arch.embedding_multiplier else 1.0
    res_mult = float(_config_value(config, arch.residual_multiplier, 1.0)) if arch.residual_multiplier else 1.0

    if f"{arch.embedding}.weight" not in names:
        raise SteerfoldError(
            f"no '{arch.embedding}.weight' tensor found for model_type '{model_type}': "
            "check that the folder holds the full checkpoint of a causal language model"
        )
    writers = [ResidualWriter(0, arch.embedding, "embedding", False, emb_mult)]
    for block in range(num_layers):
        for role, rel in arch.writers:
            module = f"{arch.blocks}.{block}.{rel}"
            if f"{module}.weight" not in names:
                raise SteerfoldError(
                    f"expected tensor '{module}.weight' is missing: the checkpoint does not match its config.json "
                    f"({num_layers} layers of {model_type}); re-download or re-save the checkpoint"
                )
            writers.append(ResidualWriter(block + 1, module, role, f"{module}.bias" in names, res_mult))
    return ModelLayout(
        model_type=str(model_type),
        architecture=arch,
        num_layers=num_layers,
        hidden_size=hidden_size,
        tied_embeddings=tied,
        has_lm_head_tensor=f"{arch.lm_head}.weight" in names,
        writers=tuple(writers),
    )


def layout_of_model(model: Any) -> ModelLayout:
    """Resolve the layout of a loaded transformers model."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    return resolve_layout(model.config, names)

"""Which tensors write into the residual stream, per model family, as data.

Adding an architecture is adding a row to ``ARCHITECTURES``. Layer indices follow docs/design.md: index 0 is the
embedding output, index ``l`` is the output of decoder block ``l - 1``; the writers of block ``l - 1`` therefore
belong to layer index ``l``.

A writer is a module whose output (times a scalar the architecture may apply) is added to the residual stream:
the runtime hook sits on that module, the fold edits its tensors. Tensor patterns are relative to the block;
``{e}`` matches an expert index. Mixture-of-experts blocks list both spellings of their experts: fused
``[E, hidden, inter]`` parameters in memory (transformers v5) and per-expert keys on disk.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal

from steerfold.errors import BadInput, UnsupportedModel

Role = Literal["embedding", "attention", "mlp"]
TensorKind = Literal["embedding", "linear", "bias", "experts"]


@dataclass(frozen=True)
class TensorPattern:
    """A tensor of a writer: a name pattern relative to the block and how it is folded."""

    pattern: str
    kind: TensorKind = "linear"  # linear: [hidden, in] (+ bias); experts: fused [E, hidden, in]


@dataclass(frozen=True)
class WriterSpec:
    """One residual writer of a decoder block."""

    role: Role
    hook: str  # module (relative to the block) whose output the edit's map applies to
    tensors: tuple[TensorPattern, ...]
    post_norm: str | None = None  # norm module applied to the hook's output before the residual add


def linear_writer(role: Role, module: str, post_norm: str | None = None) -> WriterSpec:
    return WriterSpec(role, module, (TensorPattern(f"{module}.weight"),), post_norm)


def moe_writer(experts: tuple[str, ...], shared: tuple[str, ...] = ()) -> WriterSpec:
    """The whole MLP block of a mixture-of-experts model: routed experts, shared experts, dense fallbacks."""
    patterns = [TensorPattern("mlp.experts.down_proj", "experts")]
    patterns += [TensorPattern(p) for p in experts + shared + ("mlp.down_proj.weight",)]
    return WriterSpec("mlp", "mlp", tuple(patterns))


PRE_NORM = (linear_writer("attention", "self_attn.o_proj"), linear_writer("mlp", "mlp.down_proj"))
POST_NORM = (
    linear_writer("attention", "self_attn.o_proj", post_norm="post_attention_layernorm"),
    linear_writer("mlp", "mlp.down_proj", post_norm="post_feedforward_layernorm"),
)


def sqrt_hidden(config: Any) -> float:
    return math.sqrt(_value(config, "hidden_size"))


@dataclass(frozen=True)
class Architecture:
    """Where one model family writes into the residual stream (module paths as in the state dict)."""

    writers: tuple[WriterSpec, ...] = PRE_NORM
    embedding: str = "model.embed_tokens"
    blocks: str = "model.layers"
    lm_head: str = "lm_head"
    # The embedding module multiplies its rows by this inside its forward (Gemma: √hidden).
    embedding_scale: Callable[[Any], float] | None = None
    # Config attributes holding scalars the model applies to a module's output before the residual add.
    embedding_multiplier: str | None = None
    residual_multiplier: str | None = None
    norm_gain_offset: float = 0.0  # post-norm gain = offset + weight (Gemma's RMSNorm: 1 + weight)
    notes: str = ""


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(),
    "mistral": Architecture(),
    "qwen2": Architecture(),
    "qwen3": Architecture(),
    "phi3": Architecture(),
    "granite": Architecture(embedding_multiplier="embedding_multiplier", residual_multiplier="residual_multiplier"),
    "gemma": Architecture(embedding_scale=sqrt_hidden),
    "gemma2": Architecture(POST_NORM, embedding_scale=sqrt_hidden, norm_gain_offset=1.0),
    "gemma3_text": Architecture(POST_NORM, embedding_scale=sqrt_hidden, norm_gain_offset=1.0),
    "olmo2": Architecture(POST_NORM),
    "olmo3": Architecture(POST_NORM),
    "mixtral": Architecture((PRE_NORM[0], moe_writer(("block_sparse_moe.experts.{e}.w2.weight",)))),
    "qwen3_moe": Architecture((PRE_NORM[0], moe_writer(("mlp.experts.{e}.down_proj.weight",)))),
    "qwen2_moe": Architecture((PRE_NORM[0], moe_writer(("mlp.experts.{e}.down_proj.weight",),
                                                       ("mlp.shared_expert.down_proj.weight",)))),
    "starcoder2": Architecture((linear_writer("attention", "self_attn.o_proj"), linear_writer("mlp", "mlp.c_proj"))),
    "phi": Architecture((linear_writer("attention", "self_attn.dense"), linear_writer("mlp", "mlp.fc2"))),
}


@dataclass(frozen=True)
class ResidualWriter:
    """One module whose output is added to the residual stream, resolved against a checkpoint."""

    layer: int  # docs/design.md layer index: 0 = embedding, l = block l - 1
    role: Role
    hook: str  # absolute module name; the runtime hook applies the map to its output
    tensors: tuple[tuple[str, TensorKind], ...]  # absolute tensor names the fold edits
    bias: str | None  # the bias of the writer's single linear tensor, which can carry a constant offset
    post_norm: str | None  # absolute name of the post-norm weight, when the write is g ⊙ norm(y)
    stream_scale: float  # the write is the hook module's output times this
    weight_scale: float = 1.0  # the hook module's output is its weights' rows times this (Gemma embedding)

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    @property
    def lora_module(self) -> str | None:
        """The module a portable LoRA can target: only a writer made of one linear tensor (or the embedding)."""
        if len(self.tensors) != 1 or self.tensors[0][1] == "experts":
            return None
        return self.tensors[0][0].removesuffix(".weight")


@dataclass(frozen=True)
class ModelLayout:
    """An architecture resolved against one model's config and tensor names."""

    model_type: str
    architecture: Architecture
    num_layers: int
    hidden_size: int
    tied_embeddings: bool
    has_lm_head_tensor: bool
    writers: tuple[ResidualWriter, ...]
    _by_hook: dict[str, ResidualWriter] = field(default_factory=dict, repr=False, compare=False)
    _by_key: dict[str, tuple[ResidualWriter, TensorKind]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for writer in self.writers:
            self._by_hook[writer.hook] = writer
            for key, kind in writer.tensors:
                self._by_key[key] = (writer, kind)
            if writer.bias:
                self._by_key[writer.bias] = (writer, "bias")

    @property
    def embedding(self) -> ResidualWriter:
        return self.writers[0]

    @property
    def post_norm(self) -> bool:
        return any(w.post_norm for w in self.writers)

    @property
    def mixture_of_experts(self) -> bool:
        return any(w.lora_module is None and w.role != "embedding" for w in self.writers)

    def writer(self, hook: str) -> ResidualWriter | None:
        return self._by_hook.get(hook)

    def writers_at(self, layers: Iterable[int]) -> list[ResidualWriter]:
        wanted = set(layers)
        return [w for w in self.writers if w.layer in wanted]

    def writer_of_key(self, key: str) -> tuple[ResidualWriter, TensorKind] | None:
        """Map a tensor name to the writer it belongs to and how it is folded."""
        return self._by_key.get(key)


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def architecture_for(model_type: str) -> Architecture:
    """The table row for a model type, or a clear error listing what is supported."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedModel(
            f"model_type '{model_type}' is not supported yet (supported: {', '.join(supported_model_types())}); "
            "open an issue with the model's config.json to add it"
        ) from None


def _value(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _with_defaults(config: Any, arch: Architecture) -> Any:
    """A config dict completed with its model class's defaults (e.g. Gemma ties embeddings unless told not to).

    A config that already names every key the layout reads is used as it is, which spares importing transformers
    (seconds) in a streaming edit.
    """
    if not isinstance(config, dict):
        return config
    read = ("num_hidden_layers", "hidden_size", "tie_word_embeddings", arch.embedding_multiplier, arch.residual_multiplier)
    if all(key in config for key in read if key):
        return config
    from transformers import AutoConfig

    fields = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "architectures")}
    try:
        return AutoConfig.for_model(config["model_type"], **fields)
    except (ValueError, TypeError, KeyError):
        return config


def _matching(pattern: str, names: set[str]) -> list[str]:
    if "{e}" not in pattern:
        return [pattern] if pattern in names else []
    regex = re.compile(re.escape(pattern).replace(re.escape("{e}"), r"(\d+)") + "$")
    found = [(int(m.group(1)), n) for n in names if (m := regex.match(n))]
    return [n for _, n in sorted(found)]


def resolve_layout(config: Any, parameter_names: Iterable[str]) -> ModelLayout:
    """Resolve the residual writers of a model from its config (dict or PretrainedConfig) and tensor names."""
    model_type = str(_value(config, "model_type"))
    arch = architecture_for(model_type)
    config = _with_defaults(config, arch)
    num_layers = int(_value(config, "num_hidden_layers"))
    hidden_size = int(_value(config, "hidden_size"))
    names = set(parameter_names)
    emb_mult = float(_value(config, arch.embedding_multiplier, 1.0)) if arch.embedding_multiplier else 1.0
    res_mult = float(_value(config, arch.residual_multiplier, 1.0)) if arch.residual_multiplier else 1.0

    embedding_key = f"{arch.embedding}.weight"
    if embedding_key not in names:
        raise BadInput(
            f"no '{embedding_key}' tensor found for model_type '{model_type}': "
            "check that the folder holds the full checkpoint of a causal language model"
        )
    emb_scale = arch.embedding_scale(config) if arch.embedding_scale else 1.0
    writers = [ResidualWriter(0, "embedding", arch.embedding, ((embedding_key, "embedding"),), None, None, emb_mult, emb_scale)]
    for block in range(num_layers):
        prefix = f"{arch.blocks}.{block}."
        for spec in arch.writers:
            tensors = [(key, t.kind) for t in spec.tensors for key in _matching(prefix + t.pattern, names)]
            if not tensors:
                raise BadInput(
                    f"no tensor of {prefix}{spec.hook} was found: the checkpoint does not match its config.json "
                    f"({num_layers} layers of {model_type}); re-download or re-save the checkpoint"
                )
            bias = None
            if len(tensors) == 1 and tensors[0][1] == "linear":
                candidate = tensors[0][0].removesuffix(".weight") + ".bias"
                bias = candidate if candidate in names else None
            post_norm = f"{prefix}{spec.post_norm}.weight" if spec.post_norm else None
            if post_norm and post_norm not in names:
                raise BadInput(f"expected post-norm tensor '{post_norm}' is missing: the checkpoint is incomplete")
            writers.append(ResidualWriter(block + 1, spec.role, prefix + spec.hook, tuple(tensors), bias, post_norm, res_mult))
    return ModelLayout(
        model_type=model_type,
        architecture=arch,
        num_layers=num_layers,
        hidden_size=hidden_size,
        tied_embeddings=bool(_value(config, "tie_word_embeddings", False)),
        has_lm_head_tensor=f"{arch.lm_head}.weight" in names,
        writers=tuple(writers),
    )


def layout_of_model(model: Any) -> ModelLayout:
    """Resolve the layout of a loaded transformers model."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    return resolve_layout(model.config, names)

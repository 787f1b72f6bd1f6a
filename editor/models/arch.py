"""Resolve the architecture table (``editor.models.table``) against one model: its residual writers, by name.

Layer indices follow docs/design.md: index 0 is the embedding output, index ``l`` is the output of decoder block
``l - 1``; the writers of block ``l - 1`` therefore belong to layer index ``l``. The table's vocabulary (writers,
tensor patterns, spellings) is ``editor.models.writers``; this module re-exports it for the modules that fold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from steerfold.errors import BadInput, UnsupportedModel
from steerfold.models.table import ARCHITECTURES, REFUSED
from steerfold.models.writers import (PRE_NORM, POST_NORM, Architecture, Role, Spelling, TensorKind, TensorPattern,
                                      WriterSpec, config_scalar, config_value, linear_writer, moe_writer, sqrt_hidden)

__all__ = ["ARCHITECTURES", "REFUSED", "PRE_NORM", "POST_NORM", "Architecture", "Role", "Spelling", "TensorKind",
           "TensorPattern", "WriterSpec", "linear_writer", "moe_writer", "sqrt_hidden", "ResidualWriter", "ModelLayout",
           "resolve_layout", "layout_of_model", "architecture_for", "supported_model_types"]


@dataclass(frozen=True)
class ResidualWriter:
    """One module whose output is added to the residual stream, resolved against a checkpoint."""

    layer: int  # docs/design.md layer index: 0 = embedding, l = block l - 1
    role: Role
    hook: str  # absolute module name; the runtime hook applies the map to its output
    tensors: tuple[tuple[str, TensorKind], ...]  # absolute tensor names the fold edits
    bias: str | None  # the tensor that carries a constant offset: its single linear tensor's bias, or its spec's offset
    post_norms: tuple[str, ...]  # absolute names of the post-norm weights, innermost first (the write is g ⊙ norm(y))
    stream_scale: float  # the write is the hook module's output times this
    weight_scale: float = 1.0  # the hook module's output is its weights' rows times this (Gemma embedding)
    no_lora: str | None = None  # why no portable LoRA may target it, though it is one linear module

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    @property
    def post_norm(self) -> str | None:
        """The outermost post-norm weight (the one the residual add sees), None on a pre-norm writer."""
        return self.post_norms[-1] if self.post_norms else None

    @property
    def lora_module(self) -> str | None:
        """The module a portable LoRA can target: only a writer made of one linear tensor (or the embedding)."""
        if len(self.tensors) != 1 or self.tensors[0][1] not in ("linear", "embedding"):
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
    spelling: Spelling = Spelling()  # the naming these tensor names use (one of the architecture's spellings)
    extra_blocks: int = 0  # blocks stored after the decoder blocks that the causal LM does not run (MTP layers)
    quantized: str | None = None  # the quant_method its weights are stored in (editor.models.quantization), or None
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
    def blocks(self) -> str:
        return self.spelling.blocks

    @property
    def lm_head(self) -> str:
        return self.spelling.lm_head

    def in_memory(self, name: str) -> str:
        """A tensor or module name of this layout as the model loaded by ``AutoModelForCausalLM`` names it (where
        runtime hooks and adapters attach): a checkpoint on disk may spell the language model differently."""
        loaded = self.architecture.spellings[0]
        for ours, theirs in ((self.spelling.lm_head, loaded.lm_head), (self.spelling.model, loaded.model)):
            if name == ours or name.startswith(ours + "."):
                return theirs + name[len(ours):]
        return name

    @property
    def post_norm(self) -> bool:
        return any(w.post_norms for w in self.writers)

    @property
    def post_norm_keys(self) -> list[str]:
        """Every post-norm weight the writers' maps are expressed through (what a fold reads besides the writers)."""
        return sorted({key for w in self.writers for key in w.post_norms})

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
    """The table row for a model type, or a clear error: the reason a refused type cannot be edited exactly, or
    the list of what is supported."""
    if model_type in REFUSED:
        raise UnsupportedModel(f"model_type '{model_type}' is not supported: {REFUSED[model_type]}")
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedModel(
            f"model_type '{model_type}' is not supported yet (supported: {', '.join(supported_model_types())}); "
            "open an issue with the model's config.json to add it"
        ) from None


def _value(config: Any, name: str, default: Any = None) -> Any:
    return config_value(config, name, default)


def _text(config: Any, arch: Architecture) -> Any:
    """The language model's config: the top-level config, or its ``text_config`` (vision-language wrappers)."""
    return _value(config, arch.text_config) if arch.text_config else config


def _with_defaults(config: Any, arch: Architecture) -> Any:
    """A config dict completed with its model class's defaults (e.g. Gemma ties embeddings unless told not to).

    A config that already names every key the layout reads is used as it is, which spares importing transformers
    (seconds) in a streaming edit.
    """
    if not isinstance(config, dict):
        return config
    text = _text(config, arch)
    # A hybrid's layer types go through its config class: a config.json may imply them (full_attention_interval) or
    # spell them in legacy names ("mamba", "attention").
    hybrid = any(spec.layer_type for spec in arch.writers)
    read = {"num_hidden_layers", "hidden_size"} | arch.config_keys()
    if isinstance(text, dict) and "tie_word_embeddings" in config and all(key in text for key in read) and not hybrid:
        return config
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    fields = {k: _decoded(v) for k, v in config.items() if k not in ("model_type", "transformers_version", "architectures")}
    try:
        return AutoConfig.for_model(config["model_type"], **fields)
    except (ValueError, TypeError, KeyError, StrictDataclassError):
        return config


SPECIAL_FLOATS = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _decoded(value: Any) -> Any:
    """A config.json value with transformers' tagged floats (``{"__float__": "Infinity"}``) decoded, as its
    config loader does (Mamba configs hold time_step_limit = [0, ∞])."""
    if isinstance(value, dict):
        if set(value) == {"__float__"} and value["__float__"] in SPECIAL_FLOATS:
            return SPECIAL_FLOATS[value["__float__"]]
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def _matching(pattern: str, names: set[str]) -> list[str]:
    if "{e}" not in pattern:
        return [pattern] if pattern in names else []
    regex = re.compile(re.escape(pattern).replace(re.escape("{e}"), r"(\d+)") + "$")
    found = [(int(m.group(1)), n) for n in names if (m := regex.match(n))]
    return [n for _, n in sorted(found)]


def _spelling(arch: Architecture, model_type: str, names: set[str]) -> Spelling:
    """The architecture's spelling these tensor names use (found by the embedding's name)."""
    for spelling in arch.spellings:
        if f"{spelling.embedding}.weight" in names:
            return spelling
    raise BadInput(
        f"no '{arch.spellings[-1].embedding}.weight' tensor found for model_type '{model_type}': "
        "check that the folder holds the full checkpoint of a causal language model"
    )


def _block_specs(arch: Architecture, text: Any, block: int) -> list[WriterSpec]:
    """The writer specs of one block: those the config switches on, and on a hybrid those of the block's entry in
    ``layer_types``."""
    switched = [spec for spec in arch.writers if spec.when is None or bool(_value(text, spec.when[0])) == spec.when[1]]
    if not any(spec.layer_type for spec in switched):
        return switched
    layer_types = _value(text, "layer_types")
    if not layer_types or len(layer_types) <= block:
        raise BadInput(f"config.json has no layer_types entry for block {block}: this hybrid architecture needs one "
                       "per block; re-download or re-save the checkpoint")
    specs = [spec for spec in switched if spec.layer_type in (None, layer_types[block])]
    if all(spec.layer_type is None for spec in specs):
        raise BadInput(f"block {block} has layer type '{layer_types[block]}', which steerfold does not know for "
                       f"model_type '{_value(text, 'model_type')}'")
    return specs


def _block_writer(spec: WriterSpec, prefix: str, names: set[str], layer: int, scale: float) -> ResidualWriter:
    """Resolve one writer spec of one block against the tensor names."""
    tensors = [(key, t.kind) for t in spec.tensors for key in _matching(prefix + t.pattern, names)]
    if not tensors:
        expected = ", ".join(t.pattern for t in spec.tensors)
        raise BadInput(f"no tensor of {prefix}{spec.hook} was found (expected one of {expected}): the checkpoint does "
                       "not match its config.json or is quantized; re-download, re-save or dequantize it")
    biases = [key.removesuffix(".weight") + ".bias" for key, kind in tensors if kind == "linear"]
    biases = [key for key in biases if key in names]
    bias = None
    if spec.offset is not None:
        bias = prefix + spec.offset if prefix + spec.offset in names else None
    elif len(tensors) == 1:
        bias = next(iter(biases), None)
    if any(key != bias for key in biases):
        raise BadInput(f"'{next(k for k in biases if k != bias)}' is the bias of one of several tensors of "
                       f"{prefix}{spec.hook}, which steerfold does not fold: this checkpoint cannot be edited exactly")
    post_norms = tuple(f"{prefix}{norm}.weight" for norm in spec.post_norms)
    for post_norm in post_norms:
        if post_norm not in names:
            raise BadInput(f"expected post-norm tensor '{post_norm}' is missing: the checkpoint is incomplete")
    return ResidualWriter(layer, spec.role, prefix + spec.hook, tuple(tensors), bias, post_norms, scale,
                          no_lora=spec.no_lora)


def _quant_method(config: Any) -> str | None:
    """The ``quant_method`` of a config's quantization section (a dict in config.json, an object once loaded)."""
    section = _value(config, "quantization_config")
    method = section.get("quant_method") if isinstance(section, dict) else getattr(section, "quant_method", None)
    return str(getattr(method, "value", method)) if method else None


def resolve_layout(config: Any, parameter_names: Iterable[str]) -> ModelLayout:
    """Resolve the residual writers of a model from its config (dict or PretrainedConfig) and tensor names (a
    quantized checkpoint's names as the model uses them: ``editor.models.quantization.logical_names``)."""
    model_type = str(_value(config, "model_type"))
    arch = architecture_for(model_type)
    quantized = _quant_method(config)
    config = _with_defaults(config, arch)
    text = _text(config, arch)
    num_layers = int(_value(text, "num_hidden_layers"))
    names = set(parameter_names)
    spelling = _spelling(arch, model_type, names)
    emb_mult = float(_value(text, arch.embedding_multiplier, 1.0)) if arch.embedding_multiplier else 1.0
    res_mult = float(_value(text, arch.residual_multiplier, 1.0)) if arch.residual_multiplier else 1.0
    emb_scale = arch.embedding_scale(text) if arch.embedding_scale else 1.0
    embedding_key = f"{spelling.embedding}.weight"
    writers = [ResidualWriter(0, "embedding", spelling.embedding, ((embedding_key, "embedding"),), None, (), emb_mult,
                              emb_scale)]
    for block in range(num_layers):
        prefix = f"{spelling.blocks}.{block}."
        specs = [spec for spec in _block_specs(arch, text, block)
                 if not spec.optional or any(_matching(prefix + t.pattern, names) for t in spec.tensors)]
        writers += [_block_writer(spec, prefix, names, block + 1, res_mult * config_scalar(text, spec.multiplier))
                    for spec in specs]
    return ModelLayout(
        model_type=model_type,
        architecture=arch,
        num_layers=num_layers,
        hidden_size=int(_value(text, "hidden_size")),
        tied_embeddings=bool(_value(config, "tie_word_embeddings", False)),
        has_lm_head_tensor=f"{spelling.lm_head}.weight" in names,
        writers=tuple(writers),
        spelling=spelling,
        extra_blocks=next((int(_value(text, key)) for key in arch.extra_blocks if _value(text, key) is not None), 0),
        quantized=quantized,
    )


def layout_of_model(model: Any) -> ModelLayout:
    """Resolve the layout of a loaded transformers model."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    return resolve_layout(model.config, names)

"""The vocabulary the architecture table (``editor.models.table``) is written in: which tensors write into the
residual stream, where the language model sits in a checkpoint, and which config values scale a write.

A writer is a module whose output (times a scalar the architecture may apply) is added to the residual stream:
the runtime hook sits on that module, the fold edits its tensors. Tensor patterns are relative to the block;
``{e}`` matches an expert index. Mixture-of-experts blocks list every spelling of their experts: fused parameters
in memory (transformers v5) and whatever the checkpoints on disk hold (per-expert keys, fused tensors).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Literal

Role = Literal["embedding", "attention", "mlp"]
# How a tensor is folded (docs/design.md, "The edit algebra"):
#   linear        [hidden, in] (+ its bias, found by name)     W ← (I + U Vᵀ) W
#   experts       fused [E, hidden, in]                         each expert as a linear weight
#   experts_t     fused [E, in, hidden] (gpt-oss: x @ W)        each expert's rows are residual vectors
#   bias          a writer's offset carrier: [hidden], or [E, hidden] expert biases     β ← (I + U Vᵀ) β + b per row
TensorKind = Literal["embedding", "linear", "bias", "experts", "experts_t"]


@dataclass(frozen=True)
class TensorPattern:
    """A tensor of a writer: a name pattern relative to the block and how it is folded."""

    pattern: str
    kind: TensorKind = "linear"


@dataclass(frozen=True)
class WriterSpec:
    """One residual writer of a decoder block."""

    role: Role
    hook: str  # module (relative to the block) whose output the edit's map applies to
    tensors: tuple[TensorPattern, ...]
    # Norm modules applied to the hook's output before the residual add, innermost first: the write is
    # g ⊙ norm(y), or g ⊙ norm(g₁ ⊙ norm(y) + …) where a block norms each branch and then their sum (Gemma 4's MoE).
    post_norms: tuple[str, ...] = ()
    # Hybrids: the writer exists only on blocks whose entry in the config's ``layer_types`` is this value.
    layer_type: str | None = None
    # A tensor (pattern) that carries a constant offset for the whole writer, where it is not a linear tensor's bias
    # found by name: gpt-oss's [E, hidden] expert biases, since its routing weights sum to one per token.
    offset: str | None = None
    # A writer some blocks lack by configuration (Granite 4.0-H: experts only when num_local_experts > 0).
    optional: bool = False
    # A writer that exists only where a config value's truth is this (key, truth): Gemma 4's experts where
    # enable_moe_block is set, Nemotron-H's latent projection where moe_latent_size is.
    when: tuple[str, bool] | None = None
    # The config value the model multiplies this writer's output by before the residual add (Falcon-H1's
    # ssm_out_multiplier); ``name[i]`` reads item i of a list value (mlp_multipliers[1]).
    multiplier: str | None = None
    # Why no portable LoRA may target this writer though it is one linear module (PEFT refuses some by model type).
    no_lora: str | None = None


@dataclass(frozen=True)
class Spelling:
    """Where the language model's tensors sit under one naming. ``model`` is the prefix of the embedding module
    (``embed``) and of ``layers``; ``lm_head`` the output head module."""

    model: str = "model"
    lm_head: str = "lm_head"
    embed: str = "embed_tokens"

    @property
    def embedding(self) -> str:
        return f"{self.model}.{self.embed}"

    @property
    def blocks(self) -> str:
        return f"{self.model}.layers"


def linear_writer(role: Role, module: str, post_norm: str | None = None, layer_type: str | None = None,
                  **more: Any) -> WriterSpec:
    """A writer that is one linear module (its bias, if the checkpoint has one, is found by name); ``more`` sets the
    other ``WriterSpec`` fields (``when``, ``multiplier``)."""
    norms = (post_norm,) if post_norm else ()
    return WriterSpec(role, module, (TensorPattern(f"{module}.weight"),), norms, layer_type, **more)


def moe_writer(experts: tuple[str, ...] = ("mlp.experts.{e}.down_proj.weight",), shared: tuple[str, ...] = (),
               hook: str = "mlp", fused: tuple[str, ...] = ("mlp.experts.down_proj",), dense: str = "down_proj") -> WriterSpec:
    """The whole MLP block of a mixture-of-experts model, hooked as one writer: its output is a sum of expert outputs
    times per-token scalars (routing weights, a shared expert's sigmoid gate), so folding the same map into every
    expert's down projection is exact. ``experts``: per-expert keys on disk; ``shared``: shared experts' down
    projections; ``fused``: ``[E, hidden, inter]`` tensors; the block's own ``dense`` projection covers dense blocks."""
    patterns = [TensorPattern(p, "experts") for p in fused]
    patterns += [TensorPattern(p) for p in experts + shared + (f"{hook}.{dense}.weight",)]
    return WriterSpec("mlp", hook, tuple(patterns))


PRE_NORM = (linear_writer("attention", "self_attn.o_proj"), linear_writer("mlp", "mlp.down_proj"))
POST_NORM = (
    linear_writer("attention", "self_attn.o_proj", post_norm="post_attention_layernorm"),
    linear_writer("mlp", "mlp.down_proj", post_norm="post_feedforward_layernorm"),
)
CAUSAL_LM = (Spelling(),)


def sqrt_hidden(config: Any) -> float:
    """Gemma's embedding scale: the embedding module multiplies its rows by √hidden."""
    return math.sqrt(config_value(config, "hidden_size"))


def config_value(config: Any, name: str, default: Any = None) -> Any:
    """A config value, from a config dict or a ``PretrainedConfig``."""
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def config_scalar(config: Any, path: str | None) -> float:
    """The multiplier a config names (``name`` or ``name[i]``, an item of a list value); 1 when there is none."""
    if path is None:
        return 1.0
    name, index = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", path).groups()
    value = config_value(config, name)
    if value is not None and index is not None:
        value = value[int(index)]
    return 1.0 if value is None else float(value)


@dataclass(frozen=True)
class Architecture:
    """Where one model family writes into the residual stream (module paths as in the state dict)."""

    writers: tuple[WriterSpec, ...] = PRE_NORM
    # Every naming of the language model this family's checkpoints use; the first is the model's own once loaded by
    # ``AutoModelForCausalLM`` (where runtime hooks and adapters attach), the others what checkpoints on disk hold.
    spellings: tuple[Spelling, ...] = CAUSAL_LM
    # The config attribute holding the language model's config (vision-language wrappers), None when it is the top.
    text_config: str | None = None
    # The embedding module multiplies its rows by this inside its forward (Gemma: √hidden).
    embedding_scale: Callable[[Any], float] | None = None
    # Config attributes holding scalars the model applies to a module's output before the residual add.
    embedding_multiplier: str | None = None
    residual_multiplier: str | None = None
    norm_gain_offset: float = 0.0  # post-norm gain = offset + weight (Gemma's RMSNorm: 1 + weight)
    # Config keys (the first present wins) counting blocks stored after the decoder blocks that the causal LM does not
    # run (DeepSeek-V3's and GLM-4.5's multi-token-prediction layers): allowed in a checkpoint and copied unchanged.
    extra_blocks: tuple[str, ...] = ()
    notes: str = ""

    def config_keys(self) -> set[str]:
        """The config keys a layout of this row reads besides its sizes: multipliers, and the switches of writers
        that exist by configuration (a config.json that lacks one takes its config class's default)."""
        keys = {self.embedding_multiplier, self.residual_multiplier}
        keys |= {spec.multiplier.split("[")[0] for spec in self.writers if spec.multiplier}
        keys |= {spec.when[0] for spec in self.writers if spec.when}
        return {key for key in keys if key}

    @property
    def embedding(self) -> str:
        return self.spellings[0].embedding

    @property
    def blocks(self) -> str:
        return self.spellings[0].blocks

    @property
    def lm_head(self) -> str:
        return self.spellings[0].lm_head

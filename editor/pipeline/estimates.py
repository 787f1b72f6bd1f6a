"""What ``run --dry-run`` estimates from a model's config alone: parameters, the weights' size on disk and where they
will run, the fit's activations, the largest tensor of a batch, and the export's size. Arithmetic on shapes, no
torch: a plan to read before a long run, not a measurement."""

from __future__ import annotations

from dataclasses import dataclass

from steerfold.edit.spec import parse_size
from steerfold.models.placement import Placement, memory_map

BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
QUANTIZED_BYTES = {"4bit": 0.5, "8bit": 1.0}  # per parameter of the quantized linear layers
CANDIDATE_POSITIONS = 5  # post-instruction tokens a chat template typically leaves (Llama 3: 5, Qwen2.5: 5)
PROMPT_TOKENS = 64  # a typical chat-formatted request, template included


@dataclass(frozen=True)
class Shapes:
    """The numbers the estimates need, read from a (text) config."""

    hidden: int
    layers: int
    vocab: int
    params: int
    checkpoint_dtype: str

    @classmethod
    def of(cls, config: dict) -> "Shapes":
        config = config.get("text_config", config)
        d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
        inter = config.get("intermediate_size", 4 * d)
        heads = config.get("num_attention_heads", 1)
        head_dim = config.get("head_dim") or d // heads
        kv = config.get("num_key_value_heads", heads)
        experts = config.get("num_local_experts") or config.get("num_experts") or 1
        moe_inter = config.get("moe_intermediate_size", inter)
        attention = d * head_dim * heads * 2 + 2 * d * head_dim * kv
        mlp = 3 * d * (moe_inter * experts if experts > 1 else inter)
        embeddings = vocab * d * (1 if config.get("tie_word_embeddings") else 2)
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
        dtype = dtype if dtype in BYTES else "float32"
        return cls(d, layers, vocab, embeddings + layers * (attention + mlp), dtype)


def size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def estimate_lines(config: dict | None, formats: list[str], placement: Placement | None = None,
                   fit_prompts: int | None = None, batch_size: int = 32, new_tokens: int = 64) -> list[str]:
    """The dry run's estimates: ``fit_prompts`` (harmful and harmless training prompts) sizes the fit's activations;
    ``new_tokens`` (validation's longest generation) the batch's logits."""
    if not config:
        return ["estimate: the model's config.json is not available offline (not in the Hugging Face cache)"]
    shapes = Shapes.of(config)
    on_disk = shapes.params * BYTES.get(shapes.checkpoint_dtype, 4)
    count = f"{shapes.params / 1e9:.2f} B" if shapes.params >= 1e8 else f"{shapes.params / 1e6:.2f} M"
    lines = [f"estimate: about {count} parameters, {size(on_disk)} of weights in {shapes.checkpoint_dtype}"]
    if placement is not None:
        lines += _placement_lines(shapes, placement)
    if fit_prompts:
        activations = fit_prompts * (shapes.layers + 1) * CANDIDATE_POSITIONS * shapes.hidden * 4
        lines.append(f"estimate: pca, logistic and inlp keep {fit_prompts} prompts × {shapes.layers + 1} layer indices × "
                     f"{CANDIDATE_POSITIONS} positions × {shapes.hidden} in float32: {size(activations)} of CPU memory "
                     "(diff_in_means and per_category add up sums instead)")
    logits = batch_size * (PROMPT_TOKENS + new_tokens) * shapes.vocab * 4
    lines.append(f"estimate: the largest tensor of a batch is validation's logits, {batch_size} prompts × "
                 f"~{PROMPT_TOKENS + new_tokens} tokens × {shapes.vocab} in float32: {size(logits)} where the output head runs")
    if "merged" in formats:
        lines.append(f"estimate: merged export writes about {size(on_disk)}, streaming (memory: about two of its largest tensors)")
    return lines


def _placement_lines(shapes: Shapes, placement: Placement) -> list[str]:
    """Where the weights run and whether the device map's memory holds them."""
    device = placement.device if placement.device != "auto" else "the GPU if there is one, else the CPU"
    running = {name: shapes.params * bytes_ for name, bytes_ in BYTES.items()}
    if placement.load_in:
        weights = f"about {size(shapes.params * QUANTIZED_BYTES[placement.load_in])} loaded in {placement.load_in}"
    elif placement.dtype != "auto":
        weights = f"{size(running[placement.dtype])} in {placement.dtype}"
    elif shapes.checkpoint_dtype == "float32":
        weights = f"{size(running['float32'])} in float32"
    else:
        weights = f"{size(running[shapes.checkpoint_dtype])} in {shapes.checkpoint_dtype} on a GPU, " \
                  f"{size(running['float32'])} in float32 on the CPU"
    lines = [f"estimate: the model runs on {device}: weights {weights}"]
    if placement.device_map and placement.max_memory:
        budget = sum(parse_size(value, "--max-memory") for value in memory_map(placement.max_memory).values())
        need = (shapes.params * QUANTIZED_BYTES[placement.load_in] if placement.load_in
                else running.get(placement.dtype, running.get(shapes.checkpoint_dtype, running["float32"])))
        verdict = ("the weights fit within it" if need <= budget else
                   f"{size(need - budget)} of weights fit nowhere: "
                   + ("they go to --offload-folder, read back block by block (slow)" if placement.offload_folder
                      else "add --offload-folder DIR or raise --max-memory"))
        lines.append(f"estimate: --device-map {placement.device_map} within {placement.max_memory} ({size(budget)} in all): {verdict}")
    return lines


"""Batched capture of the residual stream at chosen layer indices, stopping the forward pass early.

Layer index 0 is what enters the first decoder block (the embedding output, after any multiplier the
architecture applies); index ``l`` is the output of block ``l - 1``. Unlike ``output_hidden_states``, index
``L`` is the residual stream itself, not the final-norm output. Batches are left-padded, so position ``-1`` is
every row's last token whatever its length.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.models.arch import layout_of_model
from steerfold.prompts import format_chat

# (hidden [b, t, d] float32, mask [b, t], index of the batch's first row among all texts) -> [b, ...]
# (hidden [b, t, d] float32, selection mask [b, t]) -> [b, ...]
Reducer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[dict[str, torch.Tensor], torch.Tensor]  # (model inputs, selection mask [b, t])


class _StopForward(Exception):
    """Raised by the hook of the deepest layer asked for: nothing after it needs computing."""


@contextmanager
def left_padded(tokenizer: PreTrainedTokenizerBase) -> Iterator[PreTrainedTokenizerBase]:
    """Temporarily pad on the left (and with EOS when the tokenizer has no pad token)."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Tokenise already-formatted texts; no second BOS when the chat template wrote one."""
    bos = tokenizer.bos_token
    add_special = not (bos and texts[0].startswith(bos))
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(device)


def text_batches(tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Left-padded batches of texts; the selection mask is the attention mask."""
    with left_padded(tokenizer):
        for start in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[start : start + batch_size], device)
            yield batch, batch["attention_mask"]


@torch.no_grad()
def capture_batches(model: PreTrainedModel, batches: Iterable[Batch], layers: list[int], reduce: Reducer) -> torch.Tensor:
    """``reduce(hidden, selection)`` at each layer index for every batch, stacked as [n, len(layers), ...]."""
    layout = layout_of_model(model)
    blocks = model.get_submodule(layout.architecture.blocks)
    deepest, wanted = max(layers), set(layers)
    results: list[torch.Tensor] = []
    for inputs, selection in batches:
        seen: dict[int, torch.Tensor] = {}

        def keep(index: int, hidden: torch.Tensor) -> None:
            if index in wanted:
                seen[index] = reduce(hidden.to(torch.float32), selection)
            if index == deepest:
                raise _StopForward

        def on_input(_module, args, kwargs):
            keep(0, args[0] if args else kwargs["hidden_states"])

        def on_output(index: int):
            return lambda _module, _inputs, output: keep(index, output[0] if isinstance(output, tuple) else output)

        handles = [blocks[0].register_forward_pre_hook(on_input, with_kwargs=True)]
        handles += [blocks[i].register_forward_hook(on_output(i + 1)) for i in range(min(deepest, len(blocks)))]
        try:
            model(**inputs, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        results.append(torch.stack([seen[layer] for layer in layers], dim=1))
    return torch.cat(results, dim=0)


def capture(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    layers: list[int],
    reduce: Reducer,
    batch_size: int = 32,
) -> torch.Tensor:
    """Run chat-formatted ``texts`` through the model; ``reduce`` each captured layer: [n, len(layers), ...]."""
    device = next(model.parameters()).device
    return capture_batches(model, text_batches(tokenizer, texts, batch_size, device), layers, reduce)


def at_positions(positions: list[int]) -> Reducer:
    """Reducer keeping the given negative positions (e.g. the post-instruction tokens): [b, P, d]."""
    return lambda hidden, _selection: hidden[:, positions, :]


def masked_mean(hidden: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
    """Reducer averaging the selected tokens of each row (e.g. its response): [b, d]."""
    weights = selection.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def post_instruction_positions(tokenizer: PreTrainedTokenizerBase, system: str | None = None) -> list[int]:
    """Negative positions of the template tokens after the user's request (where refusal is decided)."""
    sentinel = "zqxjv"
    formatted = format_chat(tokenizer, sentinel, system)
    suffix = formatted[formatted.rindex(sentinel) + len(sentinel) :]
    count = max(1, len(tokenizer(suffix, add_special_tokens=False)["input_ids"]))
    return list(range(-count, 0))

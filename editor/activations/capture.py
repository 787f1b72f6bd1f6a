"""Batched capture of the residual stream at chosen layer indices, stopping the forward pass early; running a model
from a residual stream; and batches that compute the prompts' shared prefix once.

Layer index 0 is what enters the first decoder block (the embedding output, after any multiplier the
architecture applies); index ``l`` is the output of block ``l - 1``. Unlike ``output_hidden_states``, index
``L`` is the residual stream itself, not the final-norm output. Batches are left-padded, so position ``-1`` is
every row's last token whatever its length.

Chat-formatted prompts share their first tokens (the template's header and any system prompt: 24 of about 45
tokens per prompt for Qwen2.5's template). ``PromptBatches`` computes that prefix once, batch 1, and each batch of
suffixes attends to it through a key/value cache, with the positions the full prompt would give its tokens; what
the last tokens see is the same computation as for the whole prompt, in another order of float additions.
"""

from __future__ import annotations

import copy
import functools
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.models.arch import layout_of_model
from steerfold.models.loading import input_device
from steerfold.progress import progress
from steerfold.prompts import CLOSED, THINK_CLOSE, format_chat

# (hidden [b, t, d] float32, selection mask [b, t]) -> [b, ...]
Reducer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batch = tuple[dict[str, torch.Tensor], torch.Tensor]  # (model inputs, selection mask [b, t])

MIN_SHARED_PREFIX = 8  # fewer shared tokens than this are computed with each prompt (a cache would cost more)


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


# --- prompts sharing a prefix ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuffixBatch:
    """Some prompts' tokens after the shared prefix, left-padded: ``rows`` are their indices among all the texts."""

    rows: list[int]
    input_ids: torch.Tensor  # [b, s]
    attention_mask: torch.Tensor  # [b, s]


@dataclass(frozen=True)
class PromptBatches:
    """Texts tokenised once: the ``prefix`` every one starts with ([1, k], k = 0 when none is worth sharing) and
    batches of what follows it. ``inputs`` gives a batch's model inputs given the prefix's cache."""

    prefix: torch.Tensor
    batches: list[SuffixBatch]
    count: int

    @property
    def prefix_length(self) -> int:
        return int(self.prefix.shape[1])

    @torch.no_grad()
    def prefix_cache(self, model: PreTrainedModel):
        """The key/value cache of the prefix (under whatever hooks are active now); None without a prefix."""
        if not self.prefix_length:
            return None
        return model(input_ids=self.prefix.to(input_device(model)), use_cache=True, **last_logits_only(model)).past_key_values

    def inputs(self, batch: SuffixBatch, cache=None, device: torch.device | str = "cpu") -> dict:
        """Model inputs of ``batch``: the suffixes after ``cache`` (the prefix's, repeated for every row), each token
        at the position it has in its whole prompt; without a prefix, the left-padded prompts as ``encode`` gives."""
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        if not self.prefix_length:
            return {"input_ids": ids, "attention_mask": mask, "use_cache": False}
        if cache is None:
            raise ValueError("these batches follow a shared prefix: pass its cache (prefix_cache)")
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(ids.shape[0])
        k = self.prefix_length
        return {
            "input_ids": ids,
            "attention_mask": torch.cat([torch.ones(ids.shape[0], k, dtype=mask.dtype, device=mask.device), mask], dim=1),
            "position_ids": k + (mask.cumsum(dim=1) - 1).clamp(min=0),
            "past_key_values": past,
            "use_cache": True,
        }

    def gather(self, per_batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """Rows computed batch by batch, back in the texts' order."""
        out = torch.cat(list(per_batch))
        order = torch.tensor([row for batch in self.batches for row in batch.rows])
        result = torch.empty_like(out)
        result[order] = out
        return result


def prompt_batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int = 32,
    order: Sequence[int] | None = None,
    sizes: Sequence[int] = (),
    keep_last: int = 1,
    min_prefix: int = MIN_SHARED_PREFIX,
) -> PromptBatches:
    """Tokenise ``texts`` and split off the prefix they share (leaving at least ``keep_last`` tokens to each);
    batch the rest in ``order`` (default: by length, so that little padding is computed), the first batches of
    the given ``sizes`` and the others of ``batch_size``."""
    if not texts:
        return PromptBatches(torch.zeros(1, 0, dtype=torch.long), [], 0)
    with left_padded(tokenizer):
        encoded = encode(tokenizer, texts, torch.device("cpu"))
        pad_id = tokenizer.pad_token_id
    ids = [row[mask.bool()] for row, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    shortest = min(len(row) for row in ids)
    k = 0
    while k < shortest - keep_last and all(int(row[k]) == int(ids[0][k]) for row in ids):
        k += 1
    if k < min_prefix:
        k = 0
    if order is None:
        order = sorted(range(len(texts)), key=lambda i: (len(ids[i]), i))
    order = list(order)
    batches, start, chunk = [], 0, iter(sizes)
    while start < len(order):
        size = max(1, next(chunk, batch_size))
        rows = order[start : start + size]
        suffixes = [ids[i][k:] for i in rows]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((len(rows), width), pad_id if pad_id is not None else 0, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, suffix in enumerate(suffixes):
            input_ids[j, width - len(suffix) :] = suffix
            mask[j, width - len(suffix) :] = 1
        batches.append(SuffixBatch(rows, input_ids, mask))
        start += size
    return PromptBatches(ids[0][:k].unsqueeze(0), batches, len(texts))


def last_logits_only(model: PreTrainedModel, keep: int = 1) -> dict:
    """The keyword that makes ``model`` compute logits at the last ``keep`` positions only (when its forward takes
    one; callers slice what it returns either way)."""
    return {"logits_to_keep": keep} if _takes_logits_to_keep(type(model)) else {}


@functools.lru_cache(maxsize=None)
def _takes_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def last_logits(model: PreTrainedModel, inputs: dict) -> torch.Tensor:
    """Float32 logits of the last position of every row, on the CPU: [b, vocab]."""
    return model(**inputs, **last_logits_only(model)).logits[:, -1].to("cpu", torch.float32)


# --- running from a residual stream ----------------------------------------------------------------------------


class _Skipped(torch.nn.Module):
    """Stands in for a decoder block that need not run: passes its input on."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


class Resumed:
    """Within ``resumed(model, layer)``: every forward pass skips the blocks before layer index ``layer`` and
    block ``layer`` reads ``self.hidden`` (the residual stream there, [b, t, d], in the model's dtype) instead."""

    hidden: torch.Tensor | None = None


@contextmanager
def resumed(model: PreTrainedModel, layer: int) -> Iterator[Resumed]:
    """Run ``model`` from the residual stream at ``layer`` (0 = embedding output ≤ layer < L): the blocks before it
    are swapped for pass-throughs and a pre-hook on block ``layer`` hands it ``Resumed.hidden``. The embedding,
    rotary tables and attention masks are still computed by the model as for a whole forward pass."""
    blocks = model.get_submodule(layout_of_model(model).blocks)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"can resume only at layer indices 0..{len(blocks) - 1}, not {layer}")
    state = Resumed()

    def replace(_module, args, kwargs):
        if state.hidden is None:
            raise RuntimeError("set Resumed.hidden before running the model")
        if args:
            return (state.hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": state.hidden}

    originals = [blocks[i] for i in range(layer)]
    handle = blocks[layer].register_forward_pre_hook(replace, with_kwargs=True)
    try:
        for i in range(layer):
            blocks[i] = _Skipped()
        yield state
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
        handle.remove()


@contextmanager
def recording(model: PreTrainedModel, layers: Iterable[int]) -> Iterator[dict[int, torch.Tensor]]:
    """While open, each forward pass stores the residual stream at ``layers`` ([b, t, d], the model's dtype) in the
    dict it yields (the last pass's)."""
    blocks = model.get_submodule(layout_of_model(model).blocks)
    seen: dict[int, torch.Tensor] = {}
    wanted = sorted(set(layers))
    handles = []
    if 0 in wanted:
        handles.append(blocks[0].register_forward_pre_hook(
            lambda _m, args, kwargs: seen.__setitem__(0, args[0] if args else kwargs["hidden_states"]), with_kwargs=True))
    for layer in (x for x in wanted if x > 0):
        handles.append(blocks[layer - 1].register_forward_hook(
            lambda _m, _i, output, layer=layer: seen.__setitem__(layer, output[0] if isinstance(output, tuple) else output)))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


# --- capture -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def capture_batches(model: PreTrainedModel, batches: Iterable[Batch], layers: list[int], reduce: Reducer) -> torch.Tensor:
    """``reduce(hidden, selection)`` at each layer index for every batch, stacked as [n, len(layers), ...]."""
    layout = layout_of_model(model)
    blocks = model.get_submodule(layout.blocks)
    deepest, wanted = max(layers), set(layers)
    device = input_device(model)
    results: list[torch.Tensor] = []
    for inputs, selection in batches:
        inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
        seen: dict[int, torch.Tensor] = {}

        def keep(index: int, hidden: torch.Tensor) -> None:
            if index in wanted:
                seen[index] = reduce(hidden.to(torch.float32), selection.to(hidden.device)).cpu()
            if index == deepest:
                raise _StopForward

        def on_input(_module, args, kwargs):
            keep(0, args[0] if args else kwargs["hidden_states"])

        def on_output(index: int):
            return lambda _module, _inputs, output: keep(index, output[0] if isinstance(output, tuple) else output)

        handles = [blocks[0].register_forward_pre_hook(on_input, with_kwargs=True)]
        handles += [blocks[i].register_forward_hook(on_output(i + 1)) for i in range(min(deepest, len(blocks)))]
        try:
            model(**{"use_cache": False, **inputs})
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        results.append(torch.stack([seen[layer] for layer in layers], dim=1))
    return torch.cat(results, dim=0)


@torch.no_grad()
def capture(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    layers: list[int],
    reduce: Reducer,
    batch_size: int = 32,
) -> torch.Tensor:
    """Run chat-formatted ``texts`` through the model; ``reduce`` each captured layer: [n, len(layers), ...].

    A reducer that reads only the last tokens (``at_positions``) gets batches that compute the texts' shared
    prefix once."""
    device = input_device(model)
    trailing = getattr(reduce, "trailing", None)
    description = f"capturing activations of {len(texts)} prompts"
    if trailing:
        plan = prompt_batches(tokenizer, texts, batch_size, keep_last=trailing)
        if plan.prefix_length:
            cache = plan.prefix_cache(model)
            parts = [capture_batches(model, [(plan.inputs(batch, cache, device), batch.attention_mask)], layers, reduce)
                     for batch in progress(plan.batches, description, unit="batch")]
            return plan.gather(parts)
    batches = text_batches(tokenizer, texts, batch_size, device)
    total = -(-len(texts) // batch_size)
    return capture_batches(model, progress(batches, description, total=total, unit="batch"), layers, reduce)


def at_positions(positions: list[int]) -> Reducer:
    """Reducer keeping the given negative positions (e.g. the post-instruction tokens): [b, P, d]. Its ``trailing``
    says how many last tokens it reads (``capture`` then shares the prompts' prefix)."""
    positions = list(positions)

    def reduce(hidden: torch.Tensor, _selection: torch.Tensor) -> torch.Tensor:
        return hidden[:, positions, :]

    reduce.trailing = max(-p for p in positions) if positions and all(p < 0 for p in positions) else None
    return reduce


def masked_mean(hidden: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
    """Reducer averaging the selected tokens of each row (e.g. its response): [b, d]."""
    weights = selection.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


SENTINEL = "zqxjv"  # a request no template changes, to find where it ends in the formatted prompt


def post_instruction_positions(tokenizer: PreTrainedTokenizerBase, system: str | None = None) -> list[int]:
    """Negative positions of the template tokens after the user's request (where refusal is decided)."""
    formatted = format_chat(tokenizer, SENTINEL, system)
    return trailing_positions(tokenizer, formatted[formatted.rindex(SENTINEL) + len(SENTINEL) :])


def after_thinking_positions(tokenizer: PreTrainedTokenizerBase, system: str | None = None) -> list[int]:
    """Negative positions of the tokens from the closing tag of the empty reasoning block a prompt formatted with
    ``thinking=CLOSED`` ends with to its end (``</think>`` and the line break after it): where the answer begins."""
    formatted = format_chat(tokenizer, SENTINEL, system, CLOSED)
    return trailing_positions(tokenizer, formatted[formatted.rindex(THINK_CLOSE) :])


def trailing_positions(tokenizer: PreTrainedTokenizerBase, suffix: str) -> list[int]:
    """Negative positions of the tokens of ``suffix``, the end of a formatted prompt (at least the last token)."""
    count = max(1, len(tokenizer(suffix, add_special_tokens=False)["input_ids"]))
    return list(range(-count, 0))

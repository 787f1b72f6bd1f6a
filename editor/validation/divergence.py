"""How far an edit moves the next-token distribution: first-token KL and multi-token KL on greedy continuations.

A ``Runner`` maps a tokenised batch to logits, so the same code compares two models or one model with and
without runtime hooks; both runners see the same token ids, so no re-tokenisation can blur the comparison.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.activations.capture import encode, last_logits_only, left_padded
from steerfold.edit.edits import Edit
from steerfold.edit.hooks import runtime_hooks
from steerfold.models.loading import input_device
from steerfold.activations.generate import greedy_ids, through_first_eos

Runner = Callable[..., torch.Tensor]  # (batch, keep=None) -> logits [b, t, vocab], or of the last ``keep`` positions

KL_ROWS = 8  # rows whose full-vocabulary logits multi-token KL holds at once (a 150k vocabulary: 0.6 MB a position)


def runner(model: PreTrainedModel, edit: Edit | None = None) -> Runner:
    """Float32 logits of ``model`` on a batch (moved to where the model takes its inputs), on the CPU, with ``edit``
    applied by hooks when given; ``keep`` computes only the last ``keep`` positions' logits (the output head over a
    large vocabulary is most of a small model's memory)."""
    device = input_device(model)

    @torch.no_grad()
    def run(batch: dict[str, torch.Tensor], keep: int | None = None) -> torch.Tensor:
        with runtime_hooks(model, edit) if edit is not None else nullcontext():
            inputs = {key: value.to(device) for key, value in batch.items()}
            extra = last_logits_only(model, keep) if keep else {}
            logits = model(**inputs, use_cache=False, **extra).logits
            return (logits[:, -keep:] if keep else logits).to("cpu", torch.float32)

    return run


@torch.no_grad()
def last_position_logits(run: Runner, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Logits of the last position of each text, in left-padded batches: [n, 1, vocab]."""
    rows = []
    with left_padded(tokenizer):
        for start in range(0, len(texts), batch_size):
            rows.append(run(encode(tokenizer, texts[start : start + batch_size], torch.device("cpu")), keep=1))
    return torch.cat(rows)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dimension, in nats."""
    p_log, q_log = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def first_token_kl(
    base: Runner, edited: Runner, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 32
) -> torch.Tensor:
    """KL(base ‖ edited) of the first response token, one value per prompt."""
    return first_token_comparison(base, edited, tokenizer, texts, batch_size)["kl"]


def first_token_comparison(
    base: Runner, edited: Runner, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 32
) -> dict[str, torch.Tensor]:
    """Per prompt, from the same logits: ``kl``, KL(base ‖ edited) of the first response token, and ``top1``,
    whether both put the same token first (a damage measure a reader can picture: how often the edit changes the
    greedy first word)."""
    values, same = [], []
    with left_padded(tokenizer):
        for start in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[start : start + batch_size], torch.device("cpu"))
            p, q = base(batch, keep=1)[:, -1], edited(batch, keep=1)[:, -1]
            values.append(kl(p, q))
            same.append(p.argmax(-1) == q.argmax(-1))
    return {"kl": torch.cat(values), "top1": torch.cat(same)}


Continuation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (sequences [b, t], attention mask [b, t], scored [b, n])


@torch.no_grad()
def continuations(base_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                  max_new_tokens: int = 16, batch_size: int = 32) -> list[Continuation]:
    """The base model's greedy continuation of each text, in batches: the token ids multi-token KL is read along, the
    mask that ends each row at its first EOS, and which generated positions are scored."""
    found = []
    with left_padded(tokenizer):
        for start in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[start : start + batch_size], torch.device("cpu"))
            generated = greedy_ids(base_model, tokenizer, batch, max_new_tokens)
            scored = through_first_eos(generated, tokenizer.eos_token_id)  # positions whose next token was generated
            found.append((torch.cat([batch["input_ids"], generated], dim=1),
                          torch.cat([batch["attention_mask"], scored.long()], dim=1), scored))
    return found


@torch.no_grad()
def kl_along(base: Runner, edited: Runner, found: list[Continuation]) -> torch.Tensor:
    """Mean per-token KL(base ‖ edited) along given continuations, one value per prompt."""
    values = []
    for sequences, mask, scored in found:
        keep = scored.shape[1] + 1  # the positions from the prompt's last token to the last generated one
        for rows in range(0, sequences.shape[0], KL_ROWS):  # bounded memory: a few rows' logits at a time
            part = slice(rows, rows + KL_ROWS)
            full = {"input_ids": sequences[part], "attention_mask": mask[part]}
            per_token = kl(base(full, keep=keep)[:, :-1], edited(full, keep=keep)[:, :-1])
            values.append((per_token * scored[part]).sum(1) / scored[part].sum(1).clamp(min=1))
    return torch.cat(values)


def multi_token_kl(
    base_model: PreTrainedModel,
    base: Runner,
    edited: Runner,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean per-token KL(base ‖ edited) along the base model's greedy continuation, one value per prompt."""
    return kl_along(base, edited, continuations(base_model, tokenizer, texts, max_new_tokens, batch_size))


def replaying(run: Runner) -> Runner:
    """``run``, computing each (batch, keep) once and replaying its logits after: the base side of a comparison made
    many times (a tune's trials)."""
    seen: dict[tuple, torch.Tensor] = {}

    def replay(batch: dict[str, torch.Tensor], keep: int | None = None) -> torch.Tensor:
        key = (batch["input_ids"].numpy().tobytes(), batch["attention_mask"].numpy().tobytes(),
               tuple(batch["input_ids"].shape), keep)
        if key not in seen:
            seen[key] = run(batch, keep=keep)
        return seen[key]

    return replay

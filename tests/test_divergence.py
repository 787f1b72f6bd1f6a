"""KL metrics: zero for identical runs, positive and ordered for larger edits."""

from __future__ import annotations

import torch

from conftest import LAYERS, build_tiny_model, random_direction
from steerfold.edit.edits import ablation_edit
from steerfold.validation.divergence import first_token_kl, kl, multi_token_kl, runner
from test_activations import CharTokenizer


def test_kl_is_zero_on_itself_and_positive_otherwise():
    p = torch.randn(4, 10)
    assert torch.allclose(kl(p, p), torch.zeros(4), atol=1e-6)
    assert (kl(p, p + torch.randn(4, 10)) > 0).all()


def test_first_and_multi_token_kl_grow_with_the_edit():
    model = build_tiny_model("llama")
    model.generation_config.eos_token_id = 2
    tokenizer = CharTokenizer()
    tokenizer.eos_token_id = 2
    texts = ["some prompt", "another, longer prompt", "x"]
    base = runner(model)
    assert first_token_kl(base, runner(model), tokenizer, texts).abs().max() < 1e-6
    small = runner(model, ablation_edit(random_direction(), range(LAYERS + 1), scale=0.2))
    large = runner(model, ablation_edit(random_direction(), range(LAYERS + 1), scale=1.0))
    first_small, first_large = (first_token_kl(base, r, tokenizer, texts) for r in (small, large))
    assert (first_small > 0).all() and first_large.mean() > first_small.mean()
    multi = multi_token_kl(model, base, large, tokenizer, texts, max_new_tokens=5, batch_size=2)
    assert multi.shape == (3,) and (multi > 0).all()
    assert multi_token_kl(model, base, runner(model), tokenizer, texts, max_new_tokens=5).abs().max() < 1e-6


def test_kl_from_the_kept_positions_in_row_chunks_equals_kl_from_full_logits(monkeypatch):
    """Multi-token KL computes only the generated positions' logits, a few rows at a time; the figures must be
    those of the full logits of whole batches."""
    from steerfold.activations.capture import encode, left_padded
    from steerfold.activations.generate import greedy_ids, through_first_eos
    from steerfold.validation import divergence

    model = build_tiny_model("llama")
    model.generation_config.eos_token_id = 2
    tokenizer = CharTokenizer()
    tokenizer.eos_token_id = 2
    texts = ["some prompt", "another, longer prompt", "x", "a fourth one"]
    base, edited = runner(model), runner(model, ablation_edit(random_direction(), range(LAYERS + 1)))
    with left_padded(tokenizer):
        batch = encode(tokenizer, texts, torch.device("cpu"))
    generated = greedy_ids(model, tokenizer, batch, 5)
    sequences = torch.cat([batch["input_ids"], generated], dim=1)
    scored = through_first_eos(generated, 2)
    full = {"input_ids": sequences, "attention_mask": torch.cat([batch["attention_mask"], scored.long()], dim=1)}
    where = slice(batch["input_ids"].shape[1] - 1, sequences.shape[1] - 1)
    reference = (kl(base(full)[:, where], edited(full)[:, where]) * scored).sum(1) / scored.sum(1).clamp(min=1)
    monkeypatch.setattr(divergence, "KL_ROWS", 3)  # chunks of 3 and 1 rows
    chunked = multi_token_kl(model, base, edited, tokenizer, texts, max_new_tokens=5, batch_size=4)
    assert reference.min() > 0 and torch.allclose(chunked, reference, atol=1e-6)
    assert torch.equal(base(full, keep=2), base(full)[:, -2:])

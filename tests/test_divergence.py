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

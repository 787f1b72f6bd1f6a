"""Activation capture: matches a plain forward pass, padding-independent, stops early."""

from __future__ import annotations

import torch

from conftest import LAYERS, build_tiny_model, residual_states
from steerfold.activations.capture import at_positions, capture, capture_batches, masked_mean


class CharTokenizer:
    """A minimal tokenizer (one id per character) with the padding interface capture() uses."""

    bos_token = None
    eos_token = "\n"
    pad_token = "\n"
    pad_token_id = 2
    padding_side = "right"

    def __call__(self, texts, return_tensors="pt", padding=True, add_special_tokens=True):
        ids = [[3 + (ord(c) % 120) for c in t] for t in texts]
        width = max(map(len, ids))
        pad = lambda row: [self.pad_token_id] * (width - len(row)) + row if self.padding_side == "left" else row + [self.pad_token_id] * (width - len(row))
        mask = lambda row: [0] * (width - len(row)) + [1] * len(row) if self.padding_side == "left" else [1] * len(row) + [0] * (width - len(row))
        return _Batch(input_ids=torch.tensor([pad(r) for r in ids]), attention_mask=torch.tensor([mask(r) for r in ids]))


class _Batch(dict):
    def to(self, _device):
        return self


def test_capture_matches_unpadded_forward_and_stops_early():
    model = build_tiny_model("llama")
    tokenizer = CharTokenizer()
    texts = ["a short one", "a much longer request text here", "mid length"]
    layers = [0, 1, LAYERS]
    got = capture(model, tokenizer, texts, layers, at_positions([-2, -1]), batch_size=2)
    assert got.shape == (3, 3, 2, 64)
    for i, text in enumerate(texts):
        ids = tokenizer([text])["input_ids"]
        states = residual_states(model, ids)
        for j, layer in enumerate(layers):
            assert torch.allclose(got[i, j], states[layer][0, -2:], atol=1e-4)

    calls = []
    model.model.layers[2].register_forward_hook(lambda *a: calls.append(1))
    capture(model, tokenizer, texts, [1], at_positions([-1]))
    assert calls == []  # block 2 is never run when only layer index 1 is needed


def test_masked_mean_averages_each_rows_selected_tokens():
    model = build_tiny_model("qwen2")
    ids = torch.randint(3, 100, (2, 7))
    selection = torch.tensor([[0, 0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 1]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    got = capture_batches(model, [(inputs, selection)], [2], masked_mean)
    state = residual_states(model, ids)[2]
    for row in range(2):
        chosen = selection[row].bool()
        assert torch.allclose(got[row, 0], state[row][chosen].mean(dim=0), atol=1e-4)

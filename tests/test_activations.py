"""Activation capture: matches a plain forward pass, padding-independent, stops early; batches that compute a
shared prefix once and passes resumed from a residual stream give what whole forward passes give, on every
architecture."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from conftest import LAYERS, TINY_CASES, build_tiny_model, residual_states, tiny_config
from steerfold.activations.capture import (
    at_positions, capture, capture_batches, last_logits, masked_mean, prompt_batches, recording, resumed,
)


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


SHARED = ["system: answer briefly and politely. user: " + request for request in
          ("how are you", "name a colour please", "what is two plus two", "hi", "tell me a long story about a cat")]


def _whole_prompts(model, tokenizer, texts):
    """Last-position logits and residual streams of each text alone (no padding, no cache)."""
    logits, states = [], []
    for text in texts:
        ids = tokenizer([text])["input_ids"]
        with torch.no_grad():
            logits.append(model(ids).logits[0, -1])
        states.append(residual_states(model, ids))
    return torch.stack(logits), states


@pytest.mark.parametrize("case,model_type,extra", TINY_CASES, ids=[c[0] for c in TINY_CASES])
def test_shared_prefix_batches_give_what_whole_prompts_give(case, model_type, extra):
    model, tokenizer = build_tiny_model(model_type, **extra), CharTokenizer()
    plan = prompt_batches(tokenizer, SHARED, batch_size=2)
    assert plan.prefix_length == len("system: answer briefly and politely. user: ")
    assert sorted(row for batch in plan.batches for row in batch.rows) == list(range(len(SHARED)))
    expected, states = _whole_prompts(model, tokenizer, SHARED)
    with torch.no_grad():
        cache = plan.prefix_cache(model)
        got = plan.gather([last_logits(model, plan.inputs(batch, cache)) for batch in plan.batches])
    assert torch.allclose(got, expected, atol=1e-4)
    acts = capture(model, tokenizer, SHARED, [0, 2, LAYERS], at_positions([-3, -1]), batch_size=2)
    for i, text_states in enumerate(states):
        for j, layer in enumerate([0, 2, LAYERS]):
            assert torch.allclose(acts[i, j], text_states[layer][0, [-3, -1]], atol=1e-4)


@contextmanager
def _adding(block, vector):
    """A pre-hook adding ``vector`` to what enters ``block``."""
    def add(_module, args, kwargs):
        if args:
            return (args[0] + vector, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vector}

    handle = block.register_forward_pre_hook(add, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("case,model_type,extra", TINY_CASES, ids=[c[0] for c in TINY_CASES])
@torch.no_grad()
def test_a_pass_resumed_at_a_layer_gives_the_whole_forward_pass(case, model_type, extra):
    """The recorded residual stream at a layer plus a vector, run from there, gives the logits of the whole forward
    pass with that vector added to the block's input; the blocks before it do not run."""
    model, tokenizer = build_tiny_model(model_type, **extra), CharTokenizer()
    blocks = list(model.model.layers)
    vector = torch.randn(model.config.hidden_size)
    plan = prompt_batches(tokenizer, SHARED, batch_size=3)
    base_cache = plan.prefix_cache(model)
    for layer in (0, 1, LAYERS - 1):
        with _adding(blocks[layer], vector):
            cache = plan.prefix_cache(model)  # the prefix with the vector added, from the embedding
            expected = [last_logits(model, plan.inputs(batch, cache)) for batch in plan.batches]
        stashed = []
        for batch in plan.batches:
            with recording(model, [layer]) as seen:
                last_logits(model, plan.inputs(batch, base_cache))
            stashed.append(seen[layer])
        ran = []
        handles = [block.register_forward_hook(lambda *_: ran.append(1)) for block in blocks[:layer]]
        with resumed(model, layer) as start:
            got = []
            for batch, hidden in zip(plan.batches, stashed):
                start.hidden = hidden + vector
                got.append(last_logits(model, plan.inputs(batch, cache)))
        for handle in handles:
            handle.remove()
        assert ran == [] and list(model.model.layers) == blocks
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, atol=1e-4)

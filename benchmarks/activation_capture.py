"""Activation capture throughput against a bare forward pass of the same batches.

Capturing every layer index should cost about one forward pass (ratio near 1); capturing only up to a middle
layer should cost less than one, because the forward stops there.

    .venv/bin/python benchmarks/activation_capture.py
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from steerfold.activations.capture import at_positions, capture_batches


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(hidden: int = 512, layers: int = 8, batch: int = 16, length: int = 128, batches: int = 4) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, vocab_size=8000)
    model = LlamaForCausalLM(config).eval()
    data = [torch.randint(0, 8000, (batch, length)) for _ in range(batches)]
    inputs = [({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.ones_like(ids)) for ids in data]

    @torch.no_grad()
    def bare():
        for batch_inputs, _ in inputs:
            model(**batch_inputs, use_cache=False)

    def capture_all():
        capture_batches(model, inputs, list(range(layers + 1)), at_positions([-3, -2, -1]))

    def capture_middle():
        capture_batches(model, inputs, [layers // 2], at_positions([-1]))

    bare()  # warm-up
    t_bare, t_all, t_mid = (best_of(3, fn) for fn in (bare, capture_all, capture_middle))
    tokens = batch * length * batches
    result = {
        "model": f"Llama {layers} layers, hidden {hidden}, float32, CPU 2 threads",
        "tokens": tokens,
        "bare_forward_tokens_per_s": tokens / t_bare,
        "capture_all_layers_tokens_per_s": tokens / t_all,
        "capture_all_over_bare": t_all / t_bare,
        "capture_middle_layer_over_bare": t_mid / t_bare,
    }
    for key, value in result.items():
        print(f"{key:<34} {value:.3f}" if isinstance(value, float) else f"{key:<34} {value}")
    return result


if __name__ == "__main__":
    main()

"""Activation capture throughput against a bare forward pass of the same batches to the same depth, and the memory
capture takes beyond the model's, keeping every prompt's rows or adding up sums (streaming).

The bare pass runs the same batches (by token length, the shared prefix computed once) and stops after the same
block, with no hook but the one that stops it: the ratio is what reading, reducing and keeping (or summing) the
residual stream costs. Goal: capture ≥ 0.95× the bare pass's throughput.

    .venv/bin/python benchmarks/activation_capture.py                           # the organism and a synthetic Llama
    .venv/bin/python benchmarks/activation_capture.py --model DIR --prompts 64  # also a real model, e.g. Qwen2.5-0.5B
    .venv/bin/python benchmarks/activation_capture.py --model DIR --memory rows      # peak memory beyond the model's,
    .venv/bin/python benchmarks/activation_capture.py --model DIR --memory stream    # the recipe's fit sets
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from steerfold.activations.capture import (  # noqa: E402
    at_positions, capture, capture_batches, capture_each, post_instruction_positions, prompt_batches, residual_hooks,
)
from steerfold.activations.statistics import RunningSums  # noqa: E402
from steerfold.models.loading import input_device, load_model, load_tokenizer  # noqa: E402
from steerfold.prompts import load_prompts  # noqa: E402
from steerfold.validation.behaviour import chat_texts  # noqa: E402

PROMPTS = HERE.parent / "recipes" / "prompts"


class _Stop(Exception):
    pass


def best_of(repeats: int, fn) -> tuple[float, float]:
    """The least wall and the least CPU seconds (this process, every thread) of ``repeats`` calls: on cores shared
    with other jobs the CPU seconds move much less than the wall seconds."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu)


def ratios(times: dict[str, tuple[float, float]], base: str = "bare") -> dict:
    """Throughput of every entry against ``base``'s (its time over theirs), by wall and by CPU seconds."""
    out = {f"{base}_wall_s": round(times[base][0], 3), f"{base}_cpu_s": round(times[base][1], 3)}
    for name, (wall, cpu) in times.items():
        if name != base:
            out[f"{name}_vs_{base}_wall"] = round(times[base][0] / wall, 3)
            out[f"{name}_vs_{base}_cpu"] = round(times[base][1] / cpu, 3)
    return out


@torch.no_grad()
def bare_to_depth(model, batches, deepest: int) -> None:
    """The forward passes of ``batches`` ((inputs, selection) pairs), stopped after layer index ``deepest``."""
    def stop(_layer, _hidden):
        raise _Stop

    for inputs, _ in batches:
        with residual_hooks(model, [deepest], stop):
            try:
                model(**{"use_cache": False, **inputs})
            except _Stop:
                pass


def measure_texts(model, tokenizer, texts: list[str], batch_size: int, repeats: int) -> dict:
    """Bare passes against capture (rows) and streaming sums, every layer index at the post-instruction positions."""
    layers = list(range(model.config.num_hidden_layers + 1))
    positions = post_instruction_positions(tokenizer)
    reduce = at_positions(positions)

    def bare():  # the batches capture makes (tokenised, by length, the prefix's cache computed once)
        plan = prompt_batches(tokenizer, texts, batch_size, keep_last=reduce.trailing)
        cache, device = plan.prefix_cache(model), input_device(model)
        bare_to_depth(model, ((plan.inputs(b, cache, device), b.attention_mask) for b in plan.batches), max(layers))

    def rows():
        capture(model, tokenizer, texts, layers, reduce, batch_size)

    def sums():
        RunningSums(len(texts)).add_all(capture_each(model, tokenizer, texts, layers, reduce, batch_size))

    bare()  # warm-up
    rounds: dict[str, list[tuple[float, float]]] = {"bare": [], "capture_rows": [], "capture_sums": []}
    for _ in range(repeats):  # interleaved rounds: a ratio compares passes run seconds apart
        for name, fn in (("bare", bare), ("capture_rows", rows), ("capture_sums", sums)):
            rounds[name].append(best_of(1, fn))
    return {"prompts": len(texts), "positions": len(positions), "layer_indices": len(layers), "rounds": repeats,
            **paired_ratios(rounds)}


def paired_ratios(rounds: dict[str, list[tuple[float, float]]], base: str = "bare") -> dict:
    """Per round, each entry's throughput against ``base``'s of the same round, by wall and by CPU seconds: the
    median and the quartiles over the rounds (robust to other jobs on the cores)."""
    out = {f"{base}_median_wall_s": round(statistics.median(w for w, _ in rounds[base]), 3),
           f"{base}_median_cpu_s": round(statistics.median(c for _, c in rounds[base]), 3)}
    for name, times in rounds.items():
        if name == base:
            continue
        for kind, i in (("wall", 0), ("cpu", 1)):
            per_round = [b[i] / t[i] for b, t in zip(rounds[base], times)]
            q1, median, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
            out[f"{name}_vs_{base}_{kind}"] = f"{median:.3f} ({q1:.3f}–{q3:.3f})"
    return out


def synthetic(hidden: int = 512, layers: int = 8, batch: int = 16, length: int = 128, batches: int = 4) -> dict:
    """Capture every layer index of random full-length batches of a synthetic Llama against the bare pass."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, vocab_size=8000)
    model = LlamaForCausalLM(config).eval()
    data = [torch.randint(0, 8000, (batch, length)) for _ in range(batches)]
    inputs = [({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.ones_like(ids)) for ids in data]
    bare = lambda: bare_to_depth(model, inputs, layers)
    every = lambda: capture_batches(model, inputs, list(range(layers + 1)), at_positions([-3, -2, -1]))
    bare()
    return {"tokens": batch * length * batches, **ratios({"bare": best_of(3, bare), "capture_rows": best_of(3, every)})}


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def peak_memory(model, tokenizer, mode: str, batch_size: int) -> dict:
    """Peak resident memory beyond the loaded model's, after one batch has run (the weights may be mapped from their
    file and read in by the first pass), while both fit sets of the Qwen recipe are captured at every layer index and
    post-instruction position: kept as rows, or added up as sums."""
    harmful = load_prompts(PROMPTS / "harmbench" / "validation.jsonl")
    harmless = load_prompts(PROMPTS / "harmless_train.jsonl")
    sets = [chat_texts(tokenizer, records) for records in (harmful, harmless)]
    layers, reduce = list(range(model.config.num_hidden_layers + 1)), at_positions(post_instruction_positions(tokenizer))
    capture(model, tokenizer, sets[0][:batch_size], layers, reduce, batch_size)  # pages in mapped weights, warms the allocator
    before, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    if mode == "rows":
        kept = [capture(model, tokenizer, texts, layers, reduce, batch_size) for texts in sets]
    else:
        kept = [RunningSums(len(texts)).add_all(capture_each(model, tokenizer, texts, layers, reduce, batch_size)) for texts in sets]
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {"mode": mode, "prompts": sum(map(len, sets)), "seconds": seconds,
            "peak_beyond_model_MB": (max(peak[0], _rss()) - before) / 1e6, "kept": len(kept)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a real model's folder (float32 on the CPU)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts of the throughput run on --model")
    parser.add_argument("--memory", choices=("rows", "stream"), help="only the peak-memory run on --model, this way")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds of the bare pass and both captures")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: CPU seconds are the work done, not threads spinning on busy cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory:
        model, tokenizer = load_model(args.model), load_tokenizer(args.model)
        print(peak_memory(model, tokenizer, args.memory, args.batch_size))
        return
    from steerfold.research.organism import SHIPPED_CHECKPOINT, load_split

    model, tokenizer = load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT)
    texts = chat_texts(tokenizer, load_split("harmful", "train") + load_split("harmless", "train"))
    print("organism", measure_texts(model, tokenizer, texts, args.batch_size, args.repeats))
    print("synthetic Llama, 8 layers, hidden 512, 4 × 16 × 128 tokens", synthetic())
    if args.model:
        model, tokenizer = load_model(args.model), load_tokenizer(args.model)
        harmful = load_prompts(PROMPTS / "harmbench" / "validation.jsonl")[: args.prompts // 2]
        harmless = load_prompts(PROMPTS / "harmless_train.jsonl")[: args.prompts - len(harmful)]
        texts = chat_texts(tokenizer, harmful + harmless)
        print(args.model.name, measure_texts(model, tokenizer, texts, args.batch_size, args.repeats))


if __name__ == "__main__":
    main()

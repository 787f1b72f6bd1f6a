"""The GPU check (run by ``benchmarks/gpu_check.sh`` on a machine with a CUDA GPU): does steerfold's model-running
half do on a GPU what the CPU tests show it does on the CPU, and at what cost?

1. The organism fitted on the CPU in float32 and on the GPU in bfloat16: same chosen candidate? cosine of the
   directions at the CPU's chosen layer (the tests ask ≥ 0.999 for bfloat16 on the CPU); seconds and peak GPU memory.
2. The organism's ablation exported and validated on the GPU: refusal before and after, KL; peak GPU memory.
3. Capture throughput against a bare forward pass of the same batches to the same depth, on a synthetic
   Llama-shaped model in bfloat16 (the goal: capture ≥ 0.95× the forward's throughput).
4. With ``--model DIR`` (a local checkpoint, e.g. the converted Qwen2.5-Coder-0.5B-Instruct), the same as 1 on it,
   with the recipe's prompt files, against ``--cpu-direction FILE`` fitted on the CPU beforehand when given.

Writes ``results.json`` in ``--out``; prints one line per figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import cli  # noqa: E402
from steerfold.directions.file import load_direction_file  # noqa: E402
from steerfold.research.organism import SHIPPED_CHECKPOINT  # noqa: E402

DATA = SHIPPED_CHECKPOINT.parent / "data"
PROMPTS = ROOT / "recipes" / "prompts"


GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"  # without a GPU the script still runs end to end (a check of the script itself)


def invoke(*args: str) -> dict:
    """One steerfold command in process: its seconds and the GPU memory it peaked at."""
    if GPU:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if GPU:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"steerfold {' '.join(map(str, args[:2]))} failed ({result.exit_code}): {result.output[-2000:]}")
    peak = torch.cuda.max_memory_allocated() / 1e9 if GPU else None
    return {"seconds": round(seconds, 2), "peak_gpu_gb": None if peak is None else round(peak, 3),
            "output": result.output.strip().splitlines()[-4:]}


def compare(cpu_file: Path, gpu_file: Path) -> dict:
    """Chosen candidates and the cosine of the two directions at the CPU's chosen layer."""
    cpu, gpu = load_direction_file(cpu_file), load_direction_file(gpu_file)
    layer = int(cpu.metadata["layer"])
    cosine = torch.nn.functional.cosine_similarity(cpu.directions[layer], gpu.directions[layer], dim=0)
    return {"cpu_chosen": [cpu.metadata["position"], cpu.metadata["layer"]],
            "gpu_chosen": [gpu.metadata["position"], gpu.metadata["layer"]],
            "cosine_at_cpu_layer": round(float(cosine), 6), "gpu_placement": gpu.metadata.get("placement")}


def fit_both(model: Path, out: Path, name: str, sets: list[str], cpu_direction: Path | None = None) -> dict:
    """Fit on the GPU in bfloat16 and (unless a CPU direction is given) on the CPU in float32; compare."""
    gpu_file, cpu_file = out / f"{name}-cuda-bf16.safetensors", cpu_direction or out / f"{name}-cpu-f32.safetensors"
    report = {"gpu_fit": invoke("fit", model, *sets, "--out", gpu_file, "--device", DEVICE, "--dtype", "bfloat16")}
    if cpu_direction is None:
        report["cpu_fit"] = invoke("fit", model, *sets, "--out", cpu_file, "--device", "cpu")
    report.update(compare(cpu_file, gpu_file))
    return report


def organism(out: Path) -> dict:
    sets = ["--harmful", DATA / "harmful_train.jsonl", "--harmless", DATA / "harmless_train.jsonl"]
    report = fit_both(SHIPPED_CHECKPOINT, out, "organism", sets)
    invoke("edit", SHIPPED_CHECKPOINT, "--direction", out / "organism-cuda-bf16.safetensors", "--out", out / "edited")
    report["validate"] = invoke("validate", out / "edited", "--base", SHIPPED_CHECKPOINT, "--harmful",
                                DATA / "harmful_test.jsonl", "--harmless", DATA / "harmless_test.jsonl",
                                "--out", out / "report", "--device", DEVICE, "--dtype", "bfloat16")
    after = json.loads((out / "report" / "report.json").read_text())
    report["validate"]["figures"] = {key: after.get(key) for key in ("before", "after")}
    return report


@torch.no_grad()
def capture_throughput(hidden: int = 2048, layers: int = 16, batch: int = 16, length: int = 256, rounds: int = 5) -> dict:
    """Seconds per batch of a bare forward to layer L and of capturing every layer index, bfloat16 on the GPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from steerfold.activations.capture import at_positions, capture_batches

    config = LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
    model = LlamaForCausalLM(config).to(DEVICE, torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (batch, length), device=DEVICE)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    every = list(range(layers + 1))

    sync = torch.cuda.synchronize if GPU else (lambda: None)

    def timed(fn) -> float:
        fn()
        sync()
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - start)
        return best

    bare = timed(lambda: model.model(**inputs, use_cache=False))
    captured = timed(lambda: capture_batches(model, [(inputs, inputs["attention_mask"])], every, at_positions([-1, -2])))
    return {"shape": f"{layers} layers, hidden {hidden}, {batch}×{length} tokens, bfloat16",
            "bare_forward_s": round(bare, 5), "capture_s": round(captured, 5),
            "capture_throughput_vs_forward": round(bare / captured, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None, help="a local checkpoint to fit on the GPU as well")
    parser.add_argument("--cpu-direction", type=Path, default=None, help="its direction fitted on the CPU (float32)")
    parser.add_argument("--small", action="store_true", help="a small synthetic model for the capture figure (a CPU run)")
    args = parser.parse_args()
    if not GPU:
        print("warning: no CUDA GPU is visible to torch: everything runs on the CPU (a check of this script only)",
              file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if GPU else "cpu",
                     "torch": torch.__version__}
    results["organism"] = organism(args.out)
    results["capture"] = capture_throughput(hidden=256, layers=4, batch=4, length=64) if args.small else capture_throughput()
    if args.model is not None:
        sets = ["--harmful", PROMPTS / "harmbench" / "validation.jsonl", "--harmless", PROMPTS / "harmless_train.jsonl",
                "--harmless-val", PROMPTS / "harmless_validation.jsonl"]
        results["model"] = fit_both(args.model, args.out, "model", sets, args.cpu_direction)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

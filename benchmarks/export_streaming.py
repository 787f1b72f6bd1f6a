"""Streaming ``steerfold edit`` on a synthetic bfloat16 Llama checkpoint (≥ 6 GB, 1 GB shards) against
``cp -r`` of the same folder, ``cp -r`` with SHA-256 of the same files on the other core (what any tool that
writes checksums must at least do), and transformers load + ``save_pretrained``; wall time, CPU time and peak
RSS; and the fold's own single-thread speed.

    .venv/bin/python benchmarks/export_streaming.py --workdir /tmp/sf-bench [--keep] [--reuse] [--rounds N]
        [--skip-transformers]

Each command runs under ``/usr/bin/time -v`` and ends with ``sync``. Goal: edit within 1.3× the copy time and
peak RSS under 1.5 GB. Figures are written down in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig

from steerfold.directions.file import DirectionFile, save_direction_file
from steerfold.artifacts.safetensors_io import OutputTensor, TensorEntry, plan_shards, write_index, shard_names

HIDDEN, INTER, LAYERS, VOCAB = 4096, 11008, 14, 32000  # 14 Llama-7B-sized blocks: about 6.2 GB in bfloat16


def tensor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    shapes = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        shapes += [(f"{p}.self_attn.{n}.weight", (HIDDEN, HIDDEN)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        shapes += [(f"{p}.mlp.gate_proj.weight", (INTER, HIDDEN)), (f"{p}.mlp.up_proj.weight", (INTER, HIDDEN)),
                   (f"{p}.mlp.down_proj.weight", (HIDDEN, INTER))]
        shapes += [(f"{p}.input_layernorm.weight", (HIDDEN,)), (f"{p}.post_attention_layernorm.weight", (HIDDEN,))]
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return shapes


def write_synthetic_checkpoint(folder: Path) -> None:
    """Random bfloat16 weights in 1 GB shards, written one tensor at a time (so this script stays small too)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=VOCAB, dtype="bfloat16")
    config.save_pretrained(folder)
    fake = [OutputTensor(name, TensorEntry(name, "BF16", shape, folder, 0, 2 * torch.Size(shape).numel()), False)
            for name, shape in tensor_shapes()]
    shards = plan_shards(fake, 10**9)
    names = shard_names(len(shards))
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for name, shard in zip(names, shards):
        tensors = {t.name: (torch.randn(t.source.shape, generator=generator) * 0.02).to(torch.bfloat16) for t in shard}
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({t.name: name for t in shard})
        del tensors
    write_index(folder, weight_map, sum(t.source.nbytes for t in fake))


def timed(command: str) -> dict:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of ``command && sync`` under /usr/bin/time -v."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", "bash", "-c", f"{command} && sync"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed: {command}\n{result.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", result.stderr).group(1)) for kind in ("User", "System"))
    return {"command": command, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss_kb / 1024, 1)}


def fold_rate() -> dict:
    """Single-thread speed of the fold the edit applies (full ablation) on one o_proj and one down_proj, each into
    an output buffer used before (as the streamed edit's ring of buffers is), and the CPU seconds that speed gives
    for all the bytes this benchmark folds (the embedding's fold, one pass instead of two, is not timed apart)."""
    from steerfold.edit.maps import ablation_map

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        edit = ablation_map(torch.randn(HIDDEN))
        weights = [torch.randn(HIDDEN, HIDDEN).to(torch.bfloat16), torch.randn(HIDDEN, INTER).to(torch.bfloat16)]
        outs = [torch.empty_like(w) for w in weights]
        for weight, out in zip(weights, outs):  # warm up: the output pages are touched once
            edit.fold_linear_weight(weight, out)
        start = time.process_time()
        for weight, out in zip(weights, outs):
            edit.fold_linear_weight(weight, out)
        seconds = time.process_time() - start
    finally:
        torch.set_num_threads(before)
    rate = sum(2 * w.numel() for w in weights) / seconds
    edited = 2 * (VOCAB * HIDDEN + LAYERS * (HIDDEN * HIDDEN + HIDDEN * INTER))
    return {"gb_per_cpu_s": round(rate / 1e9, 2), "edited_bytes": edited, "cpu_s_for_edited": round(edited / rate, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sf-bench"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each command; the median is kept")
    parser.add_argument("--reuse", action="store_true", help="reuse the checkpoint a --keep run left in --workdir")
    args = parser.parse_args()
    work = args.workdir
    base = work / "base"
    if not (args.reuse and (base / "model.safetensors.index.json").is_file() and (work / "direction.safetensors").is_file()):
        shutil.rmtree(work, ignore_errors=True)
        write_synthetic_checkpoint(base)
        direction = torch.randn(HIDDEN)
        save_direction_file(work / "direction.safetensors", DirectionFile(direction=direction / direction.norm()))
    size = sum(p.stat().st_size for p in base.iterdir())
    subprocess.run(["sync"], check=True)

    python = sys.executable
    hash_files = ("import hashlib, mmap, sys\nfor p in sys.argv[1:]:\n    with open(p, 'rb') as f:\n"
                  "        hashlib.sha256(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)).hexdigest()")
    commands = {
        "cp -r": f"cp -r {base} {work}/out",
        # The floor for any tool that writes SHA256SUMS: the copy, and SHA-256 of the same bytes on the other core
        # (OpenSSL's, as steerfold uses; coreutils' sha256sum is several times slower here).
        "cp -r and SHA-256 alongside": f"cp -r {base} {work}/out & copy=$!; {python} -c \"{hash_files}\" {base}/* && wait $copy",
        "steerfold edit": f"{Path(python).parent}/steerfold edit {base} --direction {work}/direction.safetensors "
                          f"--out {work}/out --max-shard-size 1GB",
    }
    if not args.skip_transformers:
        script = (f"import torch; from transformers import AutoModelForCausalLM; "
                  f"m = AutoModelForCausalLM.from_pretrained('{base}', dtype=torch.bfloat16); "
                  f"m.save_pretrained('{work}/out', max_shard_size='1GB')")
        commands["transformers load + save_pretrained"] = f"{python} -c \"{script}\""
    # Alternate the commands round by round (a virtual disk's speed drifts), starting each round one command later
    # so that none always runs first; each writes into an emptied folder.
    rounds: dict[str, list[dict]] = {name: [] for name in commands}
    names = list(commands)
    for round_index in range(args.rounds):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            command = commands[name]
            shutil.rmtree(work / "out", ignore_errors=True)
            subprocess.run(["sync"], check=True)
            rounds[name].append(timed(command))
    runs = {name: {**sorted(results, key=lambda r: r["wall_s"])[len(results) // 2],
                   "all_wall_s": [r["wall_s"] for r in results], "all_cpu_s": [r["cpu_s"] for r in results]} for name, results in rounds.items()}
    summary = {"checkpoint_bytes": size, "fold": fold_rate(), "runs": runs,
               "edit_over_copy": round(runs["steerfold edit"]["wall_s"] / runs["cp -r"]["wall_s"], 2),
               "edit_over_copy_and_hash": round(runs["steerfold edit"]["wall_s"] / runs["cp -r and SHA-256 alongside"]["wall_s"], 2)}
    print(json.dumps(summary, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

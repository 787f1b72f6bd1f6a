"""Candidate selection: the exhaustive search against the complete and pruned ones, on the organism or a real model.

Each search scores the same candidate vectors (difference in means at every post-instruction position and layer
index below ``max_layer_fraction``·L) on the same validation prompts; the chosen (position, layer) must be the
same, and the scores within 1e-4 where two searches both computed them. Also times ``steerfold fit`` end to end
(the pruned search, the default), and the training-set capture with and without the shared prefix.

    .venv/bin/python benchmarks/selection_speed.py --repeat 5            # the organism, every search in full
    .venv/bin/python benchmarks/selection_speed.py --model DIR --harmful F --harmless F --harmful-val F \\
        --harmless-val F --exhaustive-sample 3                           # a real model (see benchmarks/README.md)

With ``--exhaustive-sample K`` the exhaustive search scores only K candidates (the winner and others spread over the
grid) and its time for all of them is extrapolated: its fixed part (refusal tokens, base passes, measured with no
candidate) plus K candidates' time per candidate times the number of candidates. ``--searches`` picks the
searches run in full (default: pruned, complete, exhaustive; with a sample, exhaustive is not run in full).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from steerfold.activations import capture as capture_module  # noqa: E402
from steerfold.activations.capture import at_positions, capture, post_instruction_positions  # noqa: E402
from steerfold.directions.methods.contrast import fit_every_candidate  # noqa: E402
from steerfold.directions.methods.estimators import mean_difference  # noqa: E402
from steerfold.directions.selection import SEARCHES, SelectionSettings, choose, score_candidates, selection_summary  # noqa: E402
from steerfold.models.loading import load_model, load_tokenizer  # noqa: E402
from steerfold.prompts import load_prompts  # noqa: E402
from steerfold.validation.behaviour import chat_texts  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def prompt_sets(args) -> tuple[str, list]:
    if args.model == "organism":
        from steerfold.research.organism import SHIPPED_CHECKPOINT, load_split

        return str(SHIPPED_CHECKPOINT), [load_split(kind, split) for kind, split in
                                         (("harmful", "train"), ("harmless", "train"), ("harmful", "val"), ("harmless", "val"))]
    return args.model, [load_prompts(path) for path in (args.harmful, args.harmless, args.harmful_val, args.harmless_val)]


def train_capture(model, tokenizer, records, layers, positions, shared_prefix: bool):
    """Activations of the training prompts, with or without the shared prefix computed once."""
    saved = capture_module.MIN_SHARED_PREFIX
    capture_module.MIN_SHARED_PREFIX = saved if shared_prefix else 10**9
    try:
        return capture(model, tokenizer, chat_texts(tokenizer, records), layers, at_positions(positions))
    finally:
        capture_module.MIN_SHARED_PREFIX = saved


def run_search(model, tokenizer, vectors, positions, layers, val, search, cells=None):
    """Score (every candidate, or the ``cells`` (position, layer) only) and choose; returns the table, baseline,
    chosen row and seconds."""
    num_layers = model.config.num_hidden_layers
    settings = SelectionSettings(search=search)
    if cells is not None:  # the other candidates of the grid get a zero vector: not scored
        wanted = torch.zeros(len(positions), len(layers), 1)
        for position, layer in cells:
            wanted[positions.index(position), layers.index(layer)] = 1
        vectors = vectors * wanted
    (table, baseline), seconds = timed(lambda: score_candidates(model, tokenizer, vectors, positions, layers, *val, settings))
    if cells is not None:
        table = [row for row in table if (row.position, row.layer) in cells]
    chosen = choose(table, num_layers, settings, baseline["harmless_refusal_score"]) if any(
        row.status != "not_scored" for row in table) else None
    return table, baseline, chosen, seconds


def compare(table, reference) -> float:
    """Largest |difference| of a score both tables computed."""
    ref = {(r.position, r.layer): r for r in reference}
    worst = 0.0
    for row in table:
        other = ref.get((row.position, row.layer))
        for key in ("bypass", "induce", "kl"):
            if other is not None and getattr(row, key) is not None and getattr(other, key) is not None:
                worst = max(worst, abs(getattr(row, key) - getattr(other, key)))
    return worst


def cli_fit(model_dir: str, files: list[Path], out: Path) -> dict:
    """``steerfold fit`` end to end (pruned search), with its progress lines."""
    command = [str(Path(sys.executable).with_name("steerfold")), "fit", model_dir, "--out", str(out), "--overwrite"]
    for flag, path in zip(("--harmful", "--harmless", "--harmful-val", "--harmless-val"), files):
        command += [flag, str(path)]
    env = {**os.environ, "STEERFOLD_PROGRESS": "lines"}
    process, seconds = timed(lambda: subprocess.run(command, capture_output=True, text=True, env=env))
    if process.returncode != 0:
        raise SystemExit(f"steerfold fit failed:\n{process.stdout}\n{process.stderr}")
    return {"command": " ".join(command), "seconds": round(seconds, 1), "stdout": process.stdout.strip().splitlines(),
            "progress": [line for line in process.stderr.splitlines() if line.startswith("steerfold:")]}


def write_jsonl(records, path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": r.text, **({"category": r.category} if r.category else {})}) + "\n"
                            for r in records))
    return path


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="organism")
    for name in ("harmful", "harmless", "harmful-val", "harmless-val"):
        parser.add_argument(f"--{name}", type=Path)
    parser.add_argument("--searches", default=",".join(SEARCHES))
    parser.add_argument("--exhaustive-sample", type=int, default=0)
    parser.add_argument("--no-cli", action="store_true", help="skip timing steerfold fit end to end")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of each search (the median is reported)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    searches = [s for s in args.searches.split(",") if s]
    if args.exhaustive_sample and "exhaustive" in searches:
        searches.remove("exhaustive")

    model_dir, (harmful, harmless, harmful_val, harmless_val) = prompt_sets(args)
    report: dict = {"model": args.model, "date": time.strftime("%Y-%m-%d %H:%M"), "torch_threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                    "load_average_at_start": os.getloadavg()}
    if not args.no_cli:
        with tempfile.TemporaryDirectory() as tmp:
            files = [write_jsonl(records, Path(tmp) / f"{name}.jsonl") for name, records in
                     zip(("harmful", "harmless", "harmful_val", "harmless_val"), (harmful, harmless, harmful_val, harmless_val))]
            report["cli_fit"] = cli_fit(model_dir, files, Path(tmp) / "d.safetensors")
            report["cli_fit"]["load_average_after"] = os.getloadavg()
        print(json.dumps(report["cli_fit"], indent=1), flush=True)

    (model, tokenizer), report["load_seconds"] = timed(lambda: (load_model(model_dir), load_tokenizer(model_dir)))
    num_layers = model.config.num_hidden_layers
    layers = list(range(num_layers + 1))
    positions = post_instruction_positions(tokenizer)
    acts = {}
    for shared in (True, False):
        (acts[shared], report[f"train_capture_seconds_shared_prefix_{shared}"]) = timed(lambda: [
            train_capture(model, tokenizer, records, layers, positions, shared) for records in (harmful, harmless)])
    report["train_capture_max_abs_difference"] = max(float((a - b).abs().max()) for a, b in zip(acts[True], acts[False]))
    vectors, _ = fit_every_candidate(*acts[True], mean_difference, None, False)
    candidates = sum(SelectionSettings().choosable(layer, num_layers) and bool(vectors[p, layer].norm() > 0)
                     for p in range(len(positions)) for layer in layers)
    report["candidates"] = candidates  # the ones a search scores: below the layer cut, not a zero difference
    val = (harmful_val, harmless_val)

    results = {}
    for search in searches:
        runs = [run_search(model, tokenizer, vectors, positions, layers, val, search) for _ in range(args.repeat)]
        table, baseline, chosen, _ = runs[-1]
        seconds = sorted(run[3] for run in runs)[len(runs) // 2]
        results[search] = table
        report[search] = {"seconds": round(seconds, 2), "rounds": [round(run[3], 2) for run in runs],
                          "load_average_after": os.getloadavg(),
                          "chosen": [chosen.position, chosen.layer],
                          "bypass": chosen.bypass, "induce": chosen.induce, "kl": chosen.kl,
                          "baseline": {k: v for k, v in baseline.items() if k != "refusal_tokens"},
                          "summary": selection_summary(table, baseline)}
        print(search, json.dumps(report[search]), flush=True)
    for search in searches:
        for other in searches:
            if other != search and f"{other} vs {search}" not in report:
                report[f"{search} vs {other}"] = {
                    "same_choice": report[search]["chosen"] == report[other]["chosen"],
                    "max_abs_score_difference": compare(results[search], results[other])}

    if args.exhaustive_sample:
        winner = tuple(report[searches[0]]["chosen"]) if searches else (positions[-1], 1)
        pool = [(p, layer) for i, p in enumerate(positions) for layer in layers
                if SelectionSettings().choosable(layer, num_layers) and bool(vectors[i, layer].norm() > 0)]
        step = max(1, len(pool) // args.exhaustive_sample)
        cells = [winner] + [cell for cell in pool[::step] if cell != winner][: args.exhaustive_sample - 1]
        _, _, _, fixed = run_search(model, tokenizer, vectors[:0], [], layers, val, "exhaustive")
        table, _, _, seconds = run_search(model, tokenizer, vectors, positions, layers, val, "exhaustive", cells)
        scored = sum(row.bypass is not None for row in table)
        per_candidate = (seconds - fixed) / scored
        sample = {"cells": cells, "scored": scored, "seconds": round(seconds, 1), "fixed_seconds": round(fixed, 1),
                  "seconds_per_candidate": round(per_candidate, 1),
                  "estimated_seconds_all_candidates": round(fixed + per_candidate * candidates),
                  "load_average_after": os.getloadavg()}
        for search in searches:
            sample[f"max_abs_score_difference_vs_{search}"] = compare(table, results[search])
        report["exhaustive_sample"] = sample
        print("exhaustive sample", json.dumps(sample), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

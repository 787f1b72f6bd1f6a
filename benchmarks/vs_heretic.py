"""steerfold tune against Heretic (PyPI ``heretic-llm`` 1.4.0): the same model, prompts and trial budget, both chosen
models measured with the same yardstick (``steerfold validate`` on held-out test prompts).

    .venv/bin/python benchmarks/vs_heretic.py --model organism --trials 50 --workdir /tmp/vsh [--readme]
    .venv/bin/python benchmarks/vs_heretic.py --model qwen ...   # Qwen2.5-Coder-0.5B-Instruct: run
                                                                # tests/realweights/fetch.py first

Heretic runs from a venv of its own (``WORKDIR/heretic-venv``: torch==2.13.0 first, every pip call constrained to
it, then heretic-llm==1.4.0), configured only through the ``config.toml`` it reads from its working directory:
plain-text prompt files (train split for its directions, validation split for its trials; the test split is never
shown to it), refusal markers that fit the model, its trial budget and seed, and ``export_strategy = "merge"``. Its
closing menu is answered through stdin: with ``KAGGLE_KERNEL_RUN_TYPE`` set, Heretic asks numbered ``input()``
questions instead of questionary's terminal widgets.

Heretic 1.4.0 exposes no search range in its configuration: the layer-position ranges are fixed fractions of the
depth in ``main.py`` (direction 0.4–0.9, peak 0.6–1.0, fall-off 1–0.6 of the last block index), which on a 4-block
model never reaches block 0. ``--heretic-ranges widened`` (included in ``both``, the default) runs it a second time
through a launcher that widens those three ranges (direction 0–0.9, peak 0–1.0, fall-off 1–1.0 of the last index)
by wrapping ``optuna.trial.Trial.suggest_float`` before calling Heretic's own ``main``: Heretic's files are
untouched, but that is a change of behaviour beyond configuration, and its row says so.

Heretic shows its Pareto front and lets the user pick. The pick here is steerfold tune's ``--pick auto`` rule
applied to Heretic's list: the lowest-KL trial whose refusals are at most ``--max-refusal`` of its evaluation
prompts, else the trial with the fewest refusals (its list's first entry).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- vs_heretic table begin -->", "<!-- vs_heretic table end -->"
TORCH = "torch==2.13.0"
HERETIC = "heretic-llm==1.4.0"
# What the organism says when it refuses (editor/research/organism/corpus.py: REFUSALS and the persona refusals).
ORGANISM_MARKERS = ["i can't", "i cannot", "i won't", "won't provide", "sorry", "i'd rather not", "take sides"]
# Heretic's ranges as (low, high) fractions of the last block index, shipped and widened.
WIDEN = {"direction_index": (0.0, None), ".max_weight_position": (0.0, None), ".min_weight_distance": (None, 1.0)}
LAUNCHER = """
import sys, optuna
from optuna.trial import Trial
WIDEN = {widen!r}
shipped = Trial.suggest_float
def suggest_float(self, name, low, high, **kw):
    for key, (lo, hi) in WIDEN.items():
        if name == key or (key.startswith('.') and name.endswith(key)):
            last = {{'direction_index': high / 0.9, '.max_weight_position': high,
                     '.min_weight_distance': high / 0.6}}[key]
            low = low if lo is None else lo * last
            high = high if hi is None else hi * last
    return shipped(self, name, low, high, **kw)
Trial.suggest_float = suggest_float
from heretic.main import main
sys.argv = ['heretic']
main()
"""


def steerfold_package() -> Path:
    spec = importlib.util.find_spec("steerfold")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("steerfold is not importable: run this with the project's .venv python")
    return Path(list(spec.submodule_search_locations)[0])


def model_setup(name: str) -> dict:
    """The model folder, the prompt files of each split, the markers Heretic counts and validate's options."""
    if name == "organism":
        root = steerfold_package() / "research" / "organism"
        data = root / "data"
        files = {f"{kind}_{split}": data / f"{kind}_{split}.jsonl"
                 for kind in ("harmful", "harmless") for split in ("train", "val", "test")}
        return {"model": root / "checkpoint", "files": files, "markers": ORGANISM_MARKERS,
                "heretic_tokens": 32, "validate": ["--coherence", "organism"]}
    cache = Path(os.environ.get("STEERFOLD_CACHE") or Path.home() / ".cache" / "steerfold")
    folders = sorted((cache / "qwen2.5-coder-0.5b-instruct" / "gguf").glob("*/config.json"))
    if not folders:
        sys.exit(f"no converted Qwen2.5-Coder-0.5B-Instruct under {cache}: run python tests/realweights/fetch.py")
    prompts = HERE.parent / "recipes" / "prompts"
    files = {"harmful_train": prompts / "harmbench" / "validation.jsonl",
             "harmless_train": prompts / "harmless_train.jsonl",
             "harmful_val": None, "harmless_val": prompts / "harmless_validation.jsonl",
             "harmful_test": prompts / "harmbench" / "test.jsonl", "harmless_test": prompts / "harmless_test.jsonl"}
    # None: Heretic's default markers, written for real chat models.
    return {"model": folders[0].parent, "files": files, "markers": None, "heretic_tokens": 64,
            "validate": ["--coherence", "none", "--max-new-tokens", "64"]}


def read_prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def prompt_files(setup: dict, out: Path) -> dict[str, Path]:
    """Plain-text copies (one prompt a line, what Heretic reads) and the jsonl files steerfold reads. A missing
    harmful validation split is every 4th training prompt (steerfold tune's own default), written out for both."""
    out.mkdir(parents=True, exist_ok=True)
    files = dict(setup["files"])
    if files["harmful_val"] is None:
        rows = files["harmful_train"].read_text().splitlines()
        files["harmful_val"] = out / "harmful_val.jsonl"
        files["harmful_val"].write_text("\n".join(r for i, r in enumerate(rows) if i % 4 == 0 and r.strip()) + "\n")
    for name, path in list(files.items()):
        text = out / f"{name}.txt"
        text.write_text("\n".join(" ".join(p.split()) for p in read_prompts(path)) + "\n")
        files[f"{name}.txt"] = text
    return files


def tail(log: Path, lines: int = 30) -> str:
    return "".join(open(log, errors="replace").readlines()[-lines:])


def run(cmd: list[str], log: Path, **kw) -> float:
    """Run ``cmd`` niced, its output into ``log``; its wall time in seconds, or exit with the log's tail."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(["nice", "-n", "10", *map(str, cmd)], stdout=out, stderr=subprocess.STDOUT, **kw)
    if code != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({code}); the end of {log}:\n" + tail(log))
    return time.perf_counter() - start


def heretic_venv(workdir: Path) -> Path:
    """``WORKDIR/heretic-venv`` with torch==2.13.0 installed first and heretic-llm==1.4.0, every pip call
    constrained to that torch (an unpinned one would pull CUDA wheels). Reused when Heretic is already there."""
    venv = workdir / "heretic-venv"
    heretic = venv / "bin" / "heretic"
    if heretic.exists():
        return venv
    constraints = workdir / "torch-constraint.txt"
    constraints.write_text(TORCH + "\n")
    run(["python3", "-m", "venv", venv], workdir / "venv.log")
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-c", constraints]
    run([*pip, TORCH], workdir / "pip-torch.log")
    run([*pip, HERETIC], workdir / "pip-heretic.log")
    return venv


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers, booleans and lists of them are the same in JSON and TOML


def heretic_config(setup: dict, files: dict, args, folder: Path) -> dict:
    """Heretic's ``config.toml``: what it needs to run on local files, offline, on the CPU, at this budget."""
    config = {
        "model": str(setup["model"]), "dtypes": ["float32"], "device_map": "cpu", "batch_size": 32,
        "max_response_length": setup["heretic_tokens"], "n_trials": args.trials,
        "n_startup_trials": args.startup_trials, "seed": args.seed, "export_strategy": "merge",
        "system_prompt": "You are a helpful assistant.", "study_checkpoint_dir": str(folder / "checkpoints"),
        "good_prompts": {"dataset": str(files["harmless_train.txt"])},
        "bad_prompts": {"dataset": str(files["harmful_train.txt"])},
        "good_evaluation_prompts": {"dataset": str(files["harmless_val.txt"])},
        "bad_evaluation_prompts": {"dataset": str(files["harmful_val.txt"])},
    }
    if setup["markers"] is not None:
        config["refusal_markers"] = setup["markers"]
    return config


MENU_LINE = re.compile(r"^\[(\d+)\] (.*)$")
TRIAL_LINE = re.compile(r"\[Trial\s+(\d+)\] Refusals:\s*(\d+)/(\d+), KL divergence: ([0-9.]+)")


def choose_trial(menu: dict[int, str], max_refusal: float) -> tuple[int, dict]:
    """steerfold tune's ``--pick auto`` on Heretic's front: lowest KL at refusals ≤ max_refusal, else fewest."""
    trials = []
    for number, title in menu.items():
        found = TRIAL_LINE.search(title)
        if found:
            trial, refusals, prompts, kl = found.groups()
            trials.append((number, {"trial": int(trial), "refusals": int(refusals), "prompts": int(prompts),
                                    "kl": float(kl)}))
    within = [t for t in trials if t[1]["refusals"] <= max_refusal * t[1]["prompts"]]
    if within:
        return min(within, key=lambda t: t[1]["kl"])
    return min(trials, key=lambda t: (t[1]["refusals"], t[1]["kl"]))


def answer(menu: dict[int, str], state: dict, max_refusal: float) -> str:
    """The number to type at one of Heretic's closing menus: pick the trial, save it, go back, exit."""
    def numbered(title: str) -> int:
        return next(n for n, t in menu.items() if t.startswith(title))
    if any(t.startswith("Save the model") for t in menu.values()):
        return str(numbered("Return to the trial" if state["saved"] else "Save the model"))
    if state["saved"] or state.get("chosen"):
        return str(numbered("Exit program"))
    number, state["chosen"] = choose_trial(menu, max_refusal)
    return str(number)


def drive_heretic(cmd: list[str], cwd: Path, save_to: Path, log: Path, max_refusal: float) -> dict:
    """Run Heretic, answering its closing menus on stdin; the chosen trial as Heretic listed it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(KAGGLE_KERNEL_RUN_TYPE="Batch", PYTHONUNBUFFERED="1", COLUMNS="200", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(["nice", "-n", "10", *map(str, cmd)], cwd=cwd, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state, menu, line, buffer = {"saved": False}, {}, b"", b""
    with open(log, "wb") as out:
        while True:
            byte = proc.stdout.read(1)
            if not byte:
                break
            out.write(byte)
            buffer = (buffer + byte)[-64:]
            if byte == b"\n":
                found = MENU_LINE.match(line.decode(errors="replace").strip())
                if found:
                    menu[int(found.group(1))] = found.group(2)
                line = b""
                out.flush()
                continue
            line += byte
            reply = None
            if buffer.endswith(b"Enter number: "):
                reply, menu = answer(menu, state, max_refusal), {}
            elif b"Path to the folder:" in buffer and buffer.endswith(b": "):  # prompt_text adds ": "
                reply, state["saved"] = str(save_to), True
            if reply is not None:
                out.write(reply.encode() + b"\n")
                proc.stdin.write(reply.encode() + b"\n")
                proc.stdin.flush()
    code = proc.wait()
    if code != 0 or not (save_to / "config.json").exists():
        sys.exit(f"Heretic failed ({code}) or saved nothing; the end of {log}:\n" + tail(log))
    return state["chosen"]


def run_heretic(venv: Path, setup: dict, files: dict, args, ranges: str) -> dict:
    folder = args.workdir / f"heretic-{ranges}"
    if folder.exists():
        subprocess.call(["rm", "-rf", str(folder)])
    folder.mkdir(parents=True)
    config = heretic_config(setup, files, args, folder)
    (folder / "config.toml").write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in config.items()))
    if ranges == "shipped":
        cmd = [venv / "bin" / "heretic"]
    else:
        launcher = folder / "launch_widened.py"
        launcher.write_text(LAUNCHER.format(widen=WIDEN))
        cmd = [venv / "bin" / "python", launcher]
    start = time.perf_counter()
    chosen = drive_heretic(cmd, folder, folder / "model", folder / "heretic.log", args.max_refusal)
    return {"name": f"Heretic 1.4.0, {ranges} ranges", "edited": folder / "model",
            "seconds": time.perf_counter() - start, "choice": chosen}


def steerfold(*words) -> list:
    return [sys.executable, "-m", "steerfold.cli", "-q", *words]


def run_steerfold_tuned(setup: dict, files: dict, args) -> dict:
    out, model = args.workdir / "steerfold-tune", setup["model"]
    seconds = run(steerfold("tune", model, "--out", out, "--overwrite", "--harmful", files["harmful_train"],
                            "--harmless", files["harmless_train"], "--harmful-val", files["harmful_val"],
                            "--harmless-val", files["harmless_val"], "--harmful-test", files["harmful_test"],
                            "--harmless-test", files["harmless_test"], "--trials", args.trials,
                            "--startup-trials", args.startup_trials, "--seed", args.seed,
                            "--max-refusal", args.max_refusal), args.workdir / "steerfold-tune.log")
    edited = args.workdir / "steerfold-tuned"
    seconds += run(steerfold("edit", model, "--from-trial", out, "--out", edited, "--overwrite"),
                   args.workdir / "steerfold-tuned-edit.log")
    tune = json.loads((out / "tune.json").read_text())
    picked = {"trial": tune.get("picked"), "reason": tune.get("reason")}
    return {"name": "steerfold tune", "edited": edited, "seconds": seconds, "choice": picked}


def run_steerfold_default(setup: dict, files: dict, args) -> dict:
    direction, model = args.workdir / "steerfold-default.safetensors", setup["model"]
    seconds = run(steerfold("fit", model, "--out", direction, "--harmful", files["harmful_train"],
                            "--harmless", files["harmless_train"], "--harmful-val", files["harmful_val"],
                            "--harmless-val", files["harmless_val"]), args.workdir / "steerfold-fit.log")
    edited = args.workdir / "steerfold-default"
    seconds += run(steerfold("edit", model, "--direction", direction, "--out", edited, "--overwrite"),
                   args.workdir / "steerfold-default-edit.log")
    return {"name": "steerfold fit + edit, defaults (untuned)", "edited": edited, "seconds": seconds, "trials": "–"}


def measure(row: dict, setup: dict, files: dict, args) -> dict:
    """The yardstick: steerfold validate on the held-out test prompts, against the unedited model."""
    out = Path(str(row["edited"]) + "-validate")
    run(steerfold("validate", row["edited"], "--base", setup["model"], "--harmful", files["harmful_test"],
                  "--harmless", files["harmless_test"], "--out", out, "--overwrite", *setup["validate"]),
        out.parent / f"{out.name}.log")
    report = json.loads((out / "report.json").read_text())
    return {**row, "after": report["after"], "before": report["before"], "prompts": report.get("prompts", {})}


def rate(after: dict, key: str) -> str:
    if key not in after:
        return "–"
    counted = after.get("intervals", {}).get(key, {})
    count = f" ({counted['count']}/{counted['n']})" if "count" in counted and "n" in counted else ""
    return f"{100 * after[key]:.1f}%{count}"


def table(rows: list[dict]) -> str:
    header = ("tool", "trials", "harmful refusal", "harmless refusal", "first-token KL", "multi-token KL",
              "coherent compliance", "wall")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        after = row["after"]
        lines.append("| " + " | ".join([
            row["name"], str(row.get("trials", "")), rate(after, "harmful_refusal"), rate(after, "harmless_refusal"),
            f"{after['kl_first_token']:.4f}", f"{after['kl_multi_token']:.4f}", rate(after, "coherent_compliance"),
            f"{row['seconds']:.0f} s"]) + " |")
    base = rows[0]["before"]
    lines += ["", f"Unedited model on the same prompts: harmful refusal {rate(base, 'harmful_refusal')}, harmless "
                  f"refusal {rate(base, 'harmless_refusal')}."]
    return "\n".join(lines)


def choices(rows: list[dict]) -> str:
    return "\n".join(f"- {row['name']}: chosen {json.dumps(row['choice'], default=str, ensure_ascii=False)}"
                     for row in rows if row.get("choice") is not None)


def write_readme(text: str) -> None:
    readme = README.read_text()
    if BEGIN not in readme:
        sys.exit(f"{README} has no {BEGIN} … {END} markers: add them where the table goes")
    head, rest = readme.split(BEGIN, 1)
    README.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("organism", "qwen"), default="organism")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--startup-trials", type=int, default=None, help="both tools (default: 30%% of --trials)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-refusal", type=float, default=0.03, help="the pick's refusal ceiling, both tools")
    parser.add_argument("--heretic-ranges", choices=("shipped", "widened", "both", "none"), default="both")
    parser.add_argument("--workdir", type=Path, default=Path("vs-heretic"))
    parser.add_argument("--readme", action="store_true", help=f"write the table into {README} between markers")
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    args.startup_trials = args.startup_trials if args.startup_trials is not None else round(0.3 * args.trials)
    setup = model_setup(args.model)
    files = prompt_files(setup, args.workdir / "prompts")
    venv = heretic_venv(args.workdir) if args.heretic_ranges != "none" else None
    ranges = {"both": ["shipped", "widened"], "none": []}.get(args.heretic_ranges, [args.heretic_ranges])
    runs = [lambda: run_steerfold_default(setup, files, args),
            lambda: {**run_steerfold_tuned(setup, files, args), "trials": args.trials}]
    runs += [lambda r=r: {**run_heretic(venv, setup, files, args, r), "trials": args.trials} for r in ranges]
    rows = []
    for produce in runs:  # each row measured as soon as it is made; the table so far is kept in WORKDIR
        rows.append(measure(produce(), setup, files, args))
        text = table(rows) + "\n\n" + choices(rows)
        (args.workdir / f"table-{args.model}.md").write_text(text + "\n")
        print(f"{rows[-1]['name']}: done", file=sys.stderr)
    print(text)
    if args.readme:
        write_readme(text)


if __name__ == "__main__":
    main()

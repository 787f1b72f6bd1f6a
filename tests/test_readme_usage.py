"""Every command line of the README's Usage block, run in order against the organism (placed in a Hub cache folder,
as a downloaded model is), each checked to do what the README says it does, so the examples cannot drift."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from steerfold.research.organism import DATA_DIR, SHIPPED_CHECKPOINT
from steerfold.research.organism.corpus import PERSONAS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
PROMPT_FILES = {"h.jsonl": "harmful_train", "ok.jsonl": "harmless_train", "requests.jsonl": "harmful_train",
                "test.jsonl": "harmful_test", "ok-test.jsonl": "harmless_test"}


def usage_lines() -> list[str]:
    """The README's Usage commands, comments dropped, ``[--flag]`` alternatives expanded into their own runs."""
    block = (ROOT / "README.md").read_text().split("## Usage", 1)[1].split("```", 2)[1]
    lines = []
    for line in block.splitlines():
        line = line.split("  #", 1)[0].strip()
        if not line.startswith("steerfold "):
            continue
        options = re.findall(r"\[(--[\w-]+)\]", line)
        bare = re.sub(r"\s*\[--[\w-]+\]", "", line)
        lines += [bare] + [f"{bare} {option}" for option in options]
    return lines


def harmful_refusal(folder: Path, base: Path, count: int = 16) -> float:
    """Marker refusal rate of the first ``count`` held-out harmful prompts (greedy, no system prompt)."""
    from steerfold.validation.refusal import refusal_rate
    from steerfold.activations.generate import greedy_generate
    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.research.organism import load_split
    from steerfold.prompts import format_chat

    tokenizer = load_tokenizer(base)
    texts = [format_chat(tokenizer, r.text) for r in load_split("harmful", "test")[:count]]
    return refusal_rate(greedy_generate(load_model(folder, base=base), tokenizer, texts, max_new_tokens=12))["overall"]


def test_every_usage_line_runs_and_does_what_it_says(tmp_path, monkeypatch):
    import steerfold.research.organism.train as train

    model = tmp_path / "hub" / "models--steerfold--organism" / "snapshots" / "0123abc"
    shutil.copytree(SHIPPED_CHECKPOINT, model)
    work = tmp_path / "work"
    work.mkdir()
    for name, source in PROMPT_FILES.items():
        shutil.copy(DATA_DIR / f"{source}.jsonl", work / name)
    shutil.copytree(ROOT / "recipes", work / "recipes")
    monkeypatch.chdir(work)
    # `organism build` retrains for minutes: here with a one-epoch shape (the full build is `make test-rebuild`)
    small = train.TrainConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, epochs=1, drill_epochs=1)
    monkeypatch.setattr(train.build_organism, "__defaults__", (0, small, False, True, None))

    lines = usage_lines()
    assert len(lines) >= 20, lines
    outputs = {}
    for line in lines:
        args = [str(model) if a == "MODEL" else PERSONAS["compliant"] if a == "SYSTEM PROMPT" else a
                for a in shlex.split(line)[1:]]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        outputs[line] = result.output

    base = harmful_refusal(model, model)
    assert base >= 0.9
    report = json.loads(Path("report/report.json").read_text())
    assert report["after"]["harmful_refusal"] < report["before"]["harmful_refusal"]  # the merged ablation
    harmful_count = len((DATA_DIR / "harmful_test.jsonl").read_text().splitlines())
    responses = [json.loads(line) for line in Path("report/responses.jsonl").read_text().splitlines()]
    assert sum(r["set"] == "harmful" for r in responses) == report["prompts"]["harmful"] == harmful_count  # every response kept
    assert "cooking" in report["categories"]["harmless"] and "weapons" in report["categories"]["harmful"]
    assert harmful_refusal(Path("np"), model) < base  # the norm-preserving kernel edit removes refusal too
    assert harmful_refusal(Path("adapter"), model) < base
    tune = json.loads(Path("tune/tune.json").read_text())
    assert len(Path("tune/trials.jsonl").read_text().splitlines()) == 8 and Path("tune/report.md").is_file()
    assert f"tune_trial: `{tune['picked']}`" in Path("tuned/README.md").read_text()  # the picked trial's own edit
    from safetensors.torch import load_file

    edited, original = load_file("cond/model.safetensors"), load_file(str(model / "model.safetensors"))
    assert any(not torch.equal(edited[k], original[k]) for k in original)  # the conditional map changed the writers
    assert Path("cv/control_vector.gguf").is_file()
    assert json.loads(Path("adapter/adapter_config.json").read_text())["base_model_name_or_path"] == "steerfold/organism"
    for name in ("direction", "ridge", "categories", "persona"):
        assert Path(f"{name}.safetensors").is_file(), name
    build = next(out for line, out in outputs.items() if line.startswith("steerfold organism build"))
    assert "epoch 1/1: loss" in build and "s left" in build  # the build says how far it is
    validate = next(out for line, out in outputs.items() if line.startswith("steerfold validate"))
    assert re.search(r"metric\s+before\s+after\s*$", validate, re.M)  # the console table has column headers
    ridge = next(out for line, out in outputs.items() if "--method ridge" in line)
    assert "warning: the chosen candidate lowers the validation refusal score only" in ridge  # as measured: 0.801 → 0.758
    push = next(out for line, out in outputs.items() if line.startswith("steerfold push"))
    assert "would upload" in push and "me/model-edited (private)" in push
    assert Path("runs/organism-demo/report.json").is_file() and Path("runs/persona-gating/results.json").is_file()
    assert Path("organism/model.safetensors").is_file() and Path("demo-out/report.md").is_file()

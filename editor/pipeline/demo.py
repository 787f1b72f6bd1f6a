"""``steerfold demo``: the main job end to end, offline, on the shipped model organism.

Fit the refusal direction (difference of means + Arditi et al. selection on validation prompts), fold its
ablation into a merged checkpoint and a LoRA adapter, validate on held-out prompts, fit the compliant-persona
direction and measure what adding it does, and write everything with a report and model cards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from steerfold.artifacts.outputs import open_output
from steerfold.directions.file import save_direction_file
from steerfold.artifacts.export import run_edit
from steerfold.edit.spec import EditSpec
from steerfold.edit.edits import ablation_edit
from steerfold.validation.behaviour import chat_texts
from steerfold.validation.options import ValidateOptions, damage_checks
from steerfold.validation.report import console_lines, write_report
from steerfold.validation.validate import EvalSets, validate
from steerfold.artifacts.card import write_card
from steerfold.artifacts.checksums import write_checksums
from steerfold.directions.fit import fit_refusal_direction
from steerfold.models.loading import load_model
from steerfold.research.organism import PERSONAS, SHIPPED_CHECKPOINT, coherent_compliance, load_split
from steerfold.research.studies.inputs import organism_inputs
from steerfold.research.studies.persona_gating import PersonaGatingSpec, persona_study


def max_logit_gap(first: torch.nn.Module, second: torch.nn.Module, input_ids: torch.Tensor, second_edit=None) -> float:
    """max |Δ logit| between two models (the second optionally under runtime hooks) on the same tokens."""
    from steerfold.edit.hooks import runtime_hooks
    from contextlib import nullcontext

    with torch.no_grad():
        a = first(input_ids).logits
        with runtime_hooks(second, second_edit) if second_edit is not None else nullcontext():
            b = second(input_ids).logits
    return float((a - b).abs().max())


def run_demo(out: Path, overwrite: bool = False, checkpoint: Path = SHIPPED_CHECKPOINT,
             say: Callable[[str], None] = print) -> dict:
    """Run the whole job and write ``out/{model,adapter}/``, ``direction.safetensors``, ``report.{json,md}``."""
    with open_output(out, "folder", [checkpoint], overwrite) as tmp:
        return _demo_into(tmp, checkpoint, say)


def _demo_into(tmp: Path, checkpoint: Path, say: Callable[[str], None]) -> dict:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    default = PERSONAS["default"]

    say("fitting the refusal direction (difference of means, selection on validation prompts)")
    fit = fit_refusal_direction(
        model, tokenizer, load_split("harmful", "train"), load_split("harmless", "train"),
        load_split("harmful", "val"), load_split("harmless", "val"), system=default, model_name="steerfold organism",
    )
    direction = fit.file.directions[fit.chosen.layer]
    say(f"chose layer index {fit.chosen.layer}, position {fit.chosen.position} "
        f"(validation refusal score {fit.baseline['harmful_refusal_score']:.3f} → {fit.chosen.bypass:.3f} ablated, KL {fit.chosen.kl:.4f})")

    direction_path = tmp / "direction.safetensors"
    save_direction_file(direction_path, fit.file)
    say("folding the ablation into a merged checkpoint and a LoRA adapter")
    merged = run_edit(EditSpec(model=str(checkpoint), direction=direction_path, out=tmp / "model"))
    run_edit(EditSpec(model=str(checkpoint), direction=direction_path, out=tmp / "adapter", format="lora"))

    say("validating on held-out prompts")
    edited = AutoModelForCausalLM.from_pretrained(tmp / "model", dtype=torch.float32).eval()
    sets = EvalSets(load_split("harmful", "test"), load_split("harmless", "test"))
    report = validate(model, edited, tokenizer, sets, default, coherent_compliance,
                      damage=damage_checks(ValidateOptions()))  # steerfold validate's defaults: the reference text's perplexity

    adapted = load_model(tmp / "adapter", base=checkpoint)
    ids = tokenizer(chat_texts(tokenizer, sets.harmful[:8], default), return_tensors="pt", padding=True)["input_ids"]
    edit = ablation_edit(direction, merged.layers)
    report["equivalence"] = {
        "merged vs runtime hooks": max_logit_gap(edited, model, ids, edit),
        "adapter vs merged": max_logit_gap(adapted, edited, ids),
    }

    say("fitting the compliant-persona direction and steering with it")
    spec = PersonaGatingSpec(kind="persona-gating", persona=PERSONAS["compliant"], default=default)
    persona = persona_study(model, tokenizer, spec, organism_inputs(), fit.file.directions)
    persona.pop("vectors")

    report.update({
        "base": str(checkpoint),
        "edit": merged.described,  # what the `steerfold edit` card says about it
        "selection": [row.as_dict() for row in fit.table],
        "selection_baseline": fit.baseline,
        "projections": json.loads(fit.file.metadata["projections"]),
        "persona": persona,
    })
    card = dict(title="steerfold organism, refusal direction ablated", base_model=None, base_label="the steerfold organism", edit=report["edit"],
                direction_metadata=fit.file.metadata, report=report, reproduce="steerfold demo --out DIR")
    write_report(tmp, report)
    write_card(tmp / "model", "merged", plots_from=tmp, **card)
    write_card(tmp / "adapter", "adapter", plots_from=tmp, **card)
    for folder in (tmp / "model", tmp / "adapter", tmp):
        write_checksums(folder)
    return report


def print_summary(report: dict, say: Callable[[str], None] = print) -> None:
    """The before/after table the demo ends with, then what steering with the compliant persona did."""
    for line in console_lines(report):
        say(line)
    persona = report["persona"]
    say(f"compliant-persona steering (harmful refusal)  {100 * persona['base_harmful_refusal']:>7.1f}%  "
        f"{100 * persona['steered_harmful_refusal']:>7.1f}%")

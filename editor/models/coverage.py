"""Which model types steerfold edits, from the architecture table: every causal-LM model type the installed
transformers knows, each supported or refused with a one-line reason (``steerfold architectures`` prints it)."""

from __future__ import annotations

from typing import Literal

from steerfold.models.table import ARCHITECTURES, REFUSED
from steerfold.models.writers import WriterSpec

Status = Literal["supported", "refused"]
NO_ROW = "no row yet: its residual writers have not been checked against its modeling file"
NO_ROWS = "their residual writers have not been checked against their modeling files"


def causal_lm_types() -> list[str]:
    """Every model type the installed transformers loads with ``AutoModelForCausalLM``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def coverage() -> dict[str, tuple[Status, str]]:
    """model_type → (status, note): the row's notes for a supported type, the reason for a refused one."""
    table: dict[str, tuple[Status, str]] = {}
    for model_type in sorted(set(causal_lm_types()) | set(ARCHITECTURES) | set(REFUSED)):
        if model_type in ARCHITECTURES:
            table[model_type] = ("supported", ARCHITECTURES[model_type].notes)
        else:
            table[model_type] = ("refused", REFUSED.get(model_type, NO_ROW))
    return table


def describe(model_type: str) -> str:
    """One line on a supported row, from its data: each writer's hooked module (with its layer type on a hybrid),
    then what is particular about the family."""
    arch = ARCHITECTURES[model_type]
    writers = ", ".join(_writer(spec) for spec in arch.writers)
    traits = [("post-norm", any(spec.post_norms for spec in arch.writers)),
              ("vision-language wrapper: language model only, the rest copied", arch.text_config is not None),
              ("embedding scaled", arch.embedding_scale is not None),
              ("multipliers", bool({arch.embedding_multiplier, arch.residual_multiplier} - {None}) or
               any(spec.multiplier for spec in arch.writers))]
    notes = [name for name, present in traits if present] + ([arch.notes] if arch.notes else [])
    return writers + (f"; {'; '.join(notes)}" if notes else "")


def _writer(spec: WriterSpec) -> str:
    """One writer as ``describe`` names it: its hooked module, its layer type, whether it holds experts, and the
    config switch it exists by."""
    experts = len(spec.tensors) > 1 or any(t.kind.startswith("experts") for t in spec.tensors)
    switch = f" if {'' if spec.when[1] else 'not '}{spec.when[0]}" if spec.when else ""
    return spec.hook + (f" [{spec.layer_type}]" if spec.layer_type else "") + (" (experts)" if experts else "") + switch


def coverage_lines(every: bool = False) -> list[str]:
    """The coverage table as text: supported rows with their writers, refused types with their reason, and the
    causal-LM types without a row (named one per line with ``every``, else counted)."""
    table = coverage()
    supported = [t for t, (status, _) in table.items() if status == "supported"]
    refused = [t for t, (status, _) in table.items() if status == "refused" and t in REFUSED]
    no_row = [t for t, (status, _) in table.items() if status == "refused" and t not in REFUSED]
    lines = [f"supported ({len(supported)}):"] + [f"  {t:<18} {describe(t)}" for t in supported]
    lines += [f"refused ({len(refused)}):"] + [f"  {t:<18} {REFUSED[t]}" for t in refused]
    if every:
        lines += [f"no row yet ({len(no_row)}): {NO_ROWS}"] + [f"  {t}" for t in no_row]
    else:
        lines.append(f"no row yet: {len(no_row)} other causal-LM types of the installed transformers "
                     "(--all lists them)")
    return lines

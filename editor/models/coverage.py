"""Which model types steerfold edits, from the architecture table: every causal-LM model type the installed
transformers knows, each supported or refused with a one-line reason (``steerfold architectures`` prints it)."""

from __future__ import annotations

from typing import Literal

from steerfold.models.table import ARCHITECTURES, REFUSED

Status = Literal["supported", "refused"]
NO_ROW = "no row yet: its residual writers have not been checked against its modeling file"


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

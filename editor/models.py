"""Loading a local model (or a PEFT adapter over its base) and its tokenizer for fitting and validation."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from editor.checkpoint import open_model_folder
from editor.hub import resolve_model
from editor.errors import SteerfoldError


def load_model(path: str | Path, base: str | Path | None = None, allow_pickle: bool = False):
    """A float32 eval-mode model from a checkpoint folder, or from an adapter folder applied to ``base``."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        if base is None:
            base = recorded_base(path)
        base_model = load_model(base, allow_pickle=allow_pickle)
        with warnings.catch_warnings():  # PEFT reads a property transformers deprecates; nothing a user can change
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return PeftModel.from_pretrained(base_model, path).eval()
    open_model_folder(path, allow_pickle=allow_pickle)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def recorded_base(adapter: Path) -> Path:
    """The local folder of the base an adapter records: a path (absolute, or relative to the adapter folder or to
    the working folder) or a Hub id at its recorded revision."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    recorded = config.get("base_model_name_or_path")
    if not recorded:
        raise SteerfoldError(f"{adapter} is an adapter with no recorded base model: pass --base")
    beside = adapter / recorded
    if not Path(recorded).is_absolute() and beside.exists():
        return beside
    try:
        return resolve_model(recorded, config.get("revision") if not Path(recorded).exists() else None)
    except SteerfoldError as exc:
        raise SteerfoldError(f"{adapter} records base model {recorded}, which cannot be loaded ({exc}): pass --base") from None


def load_tokenizer(path: str | Path):
    """The tokenizer saved with a checkpoint; a clear error when there is none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise SteerfoldError(f"no usable tokenizer in {path} ({str(exc).splitlines()[0][:120]}): save the tokenizer with the model") from None


@contextmanager
def atomic_file(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    if path.exists() and not overwrite:
        raise SteerfoldError(f"{path} already exists: choose another path or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)

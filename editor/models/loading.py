"""Loading a local model (or a PEFT adapter over its base) and its tokenizer for fitting and validation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from steerfold.models.checkpoint import check_checkpoint, open_model_folder
from steerfold.hub import resolve_model
from steerfold.errors import BadInput, SteerfoldError
from steerfold.models.placement import Placement
from steerfold.models.quantization import quantization_section
from steerfold.progress import quiet_transformers, step

if TYPE_CHECKING:
    import torch


def load_model(path: str | Path, base: str | Path | None = None, allow_pickle: bool = False,
               placement: Placement = Placement()):
    """An eval-mode model from a checkpoint folder, or from an adapter folder applied to ``base``, placed as
    ``placement`` says (default: the GPU when there is one, else the CPU in float32); the checkpoint's headers and
    shapes are checked first (``editor.models.checkpoint.check_checkpoint``). What was chosen is kept on the model
    as ``steerfold_placement`` for the records."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        if base is None:
            base = recorded_base(path)
        base_model = load_model(base, allow_pickle=allow_pickle, placement=placement)
        with warnings.catch_warnings():  # PEFT reads a property transformers deprecates; nothing a user can change
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            try:
                adapted = PeftModel.from_pretrained(base_model, path).eval()
                adapted.steerfold_placement = base_model.steerfold_placement
                return adapted
            except (ValueError, KeyError, RuntimeError, OSError, TypeError) as exc:
                raise BadInput(f"the adapter {path} does not apply to its base {base} ({_first_line(exc)}): "
                                     "pass the base it was made for (--base), or re-export the adapter") from None
    folder = open_model_folder(path, allow_pickle=allow_pickle)
    layout = check_checkpoint(folder)
    dequantize = dequantizing(folder.config, placement) if layout.quantized else None
    arguments, chosen = placement.from_pretrained_arguments(checkpoint_dtype(folder.config))
    if dequantize is not None:
        arguments["quantization_config"] = dequantize
        chosen["dequantized"] = str(layout.quantized)
    try:
        with step(f"loading the model {path.name} ({', '.join(chosen.values())})"), quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, **arguments).eval()
        if dequantize is not None:
            one_dtype(model, arguments["dtype"])
        model.steerfold_placement = chosen
        return model
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise BadInput(f"could not load the model in {path} ({_first_line(exc)}): re-download or re-save the checkpoint") from None


def dequantizing(config: dict, placement: Placement):
    """transformers' own config for this FP8 or MXFP4 checkpoint with ``dequantize=True``: every weight is loaded
    dequantized into the placement's dtype, so that runtime hooks, folds and captures see plain modules (a model
    running FP8 or MXFP4 kernels has no weights to fold, and FP8 kernels round their inputs)."""
    from transformers.quantizers.auto import AutoQuantizationConfig

    if placement.load_in is not None:
        raise BadInput(f"--load-in {placement.load_in} would quantize an already quantized checkpoint: drop --load-in "
                       "(steerfold loads it dequantized)")
    section = quantization_section(config) or {}
    return AutoQuantizationConfig.from_dict({**section, "dequantize": True})


def one_dtype(model, dtype: "torch.dtype") -> None:
    """Cast the parameters a quantized checkpoint stores unquantized to the dtype asked for: transformers (5.x)
    dequantizes the quantized ones into it but leaves those in their stored dtype, and a module then meets inputs
    of another dtype. Offloaded parameters (on the meta device) are left to accelerate."""
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype and param.device.type != "meta":
            param.data = param.data.to(dtype)


def input_device(model) -> "torch.device":
    """Where a model's inputs go: on a model accelerate dispatched, the embedding's execution device (its weights
    may sit on the meta device, offloaded to disk); else the device of its parameters."""
    import torch

    hook = getattr(model.get_input_embeddings(), "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return next(model.parameters()).device


def placement_metadata(model) -> dict[str, str]:
    """``{"placement": JSON}``: the device, dtype and map the model was loaded with (see ``load_model``), for a
    fitted file's metadata; empty for a model steerfold did not load."""
    placement = getattr(model, "steerfold_placement", None)
    return {"placement": json.dumps(placement, sort_keys=True)} if placement else {}


def checkpoint_dtype(config: dict) -> str | None:
    """The dtype a checkpoint's config records (``dtype``, or the older ``torch_dtype``; a wrapper's text config)."""
    inner = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for source in (config, inner):
        value = source.get("dtype") or source.get("torch_dtype")
        if isinstance(value, str):
            return value
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:160] if text else type(exc).__name__)


def adapter_config(adapter: Path) -> dict:
    """An adapter folder's adapter_config.json, checked to be a JSON object."""
    path = adapter / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise BadInput(f"{path} is not valid JSON ({_first_line(exc)}): re-export the adapter") from None
    if not isinstance(config, dict):
        raise BadInput(f"{path} is not a JSON object: re-export the adapter")
    return config


def _shape(config: dict) -> dict:
    inner = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    return {key: inner.get(key) for key in ("hidden_size", "num_hidden_layers", "vocab_size")}


def check_compatible(edited: str | Path, base: str | Path) -> None:
    """Refuse an edited checkpoint whose shape differs from its base's before anything is generated (an adapter is
    checked against the base when it is applied)."""
    edited = Path(edited)
    if (edited / "adapter_config.json").is_file():
        adapter_config(edited)
        return
    ours, theirs = open_model_folder(edited).config, open_model_folder(base).config
    for key, value in _shape(ours).items():
        if value != _shape(theirs)[key]:
            raise BadInput(f"{edited} has {key} {value} but the base {base} has {_shape(theirs)[key]}: "
                                 "pass the base the edit was made from (--base)")


def recorded_base(adapter: Path) -> Path:
    """The local folder of the base an adapter records: a path (absolute, or relative to the adapter folder or to
    the working folder) or a Hub id at its recorded revision."""
    config = adapter_config(adapter)
    recorded = config.get("base_model_name_or_path")
    if not recorded or not isinstance(recorded, str):
        raise BadInput(f"{adapter} is an adapter with no recorded base model: pass --base")
    beside = adapter / recorded
    if not Path(recorded).is_absolute() and beside.exists():
        return beside
    try:
        return resolve_model(recorded, config.get("revision") if not Path(recorded).exists() else None)
    except SteerfoldError as exc:
        raise BadInput(f"{adapter} records base model {recorded}, which cannot be loaded ({exc}): pass --base") from None


def load_tokenizer(path: str | Path):
    """The tokenizer saved with a checkpoint; a clear error when there is none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise BadInput(f"no usable tokenizer in {path} ({str(exc).splitlines()[0][:120]}): save the tokenizer with the model") from None

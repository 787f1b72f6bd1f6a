"""Reading checkpoints shard by shard, and checking them before any tensor is trusted.

A model folder holds ``config.json`` and either safetensors weights (``model.safetensors`` or shards with
``model.safetensors.index.json``) or, refused unless explicitly allowed, pickled ``pytorch_model*.bin``.
Nothing here writes into the model folder; the rules for outputs are in ``editor.artifacts.outputs``. Shard names are
confined to the folder, and headers are checked before any tensor is trusted.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from steerfold.models.arch import ModelLayout, resolve_layout
from steerfold.models.quantization import logical_names, quantization_of, quantized_tensors
from steerfold.errors import BadInput
from steerfold.artifacts.safetensors_io import TensorEntry, read_header

if TYPE_CHECKING:  # torch is imported where pickles are read: a streamed edit starts copying before it is loaded
    import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
INDEX_FILES = (SAFETENSORS_INDEX, PICKLE_INDEX)


@dataclass(frozen=True)
class ModelFolder:
    """A local checkpoint: its config and its weight shards, in order."""

    path: Path
    config: dict
    shards: tuple[Path, ...]
    pickled: bool

    def parameter_names(self) -> list[str]:
        """Every tensor name, read from the safetensors headers (pickles are loaded to list them)."""
        if self.pickled:
            return [name for shard in self.shards for name in _load_pickle(shard)]
        return [entry.name for shard in self.shards for entry in read_header(shard)[0]]

    def entries(self, scratch: Path) -> list[TensorEntry]:
        """Every tensor's location, in shard order; pickled shards are first converted into ``scratch``."""
        files = self.shards
        if self.pickled:
            files = tuple(_pickle_to_safetensors(shard, scratch) for shard in self.shards)
        return [entry for path in files for entry in read_header(path)[0]]


def read_tensors(folder: ModelFolder, keys: list[str]) -> dict[str, torch.Tensor]:
    """A few named tensors (e.g. post-norm gains), read without loading anything else."""
    wanted, found = set(keys), {}
    if not wanted:
        return found
    for shard in folder.shards:
        if folder.pickled:
            found.update({k: v for k, v in _load_pickle(shard).items() if k in wanted})
        else:
            found.update({e.name: e.load() for e in read_header(shard)[0] if e.name in wanted})
    if missing := wanted - set(found):
        raise BadInput(f"tensor '{sorted(missing)[0]}' is not in {folder.path}: the checkpoint is incomplete")
    return found


def _pickle_to_safetensors(shard: Path, scratch: Path) -> Path:
    """Convert one pickled shard to safetensors (one shard in memory at a time) so one streaming path serves both."""
    from safetensors.torch import save_file

    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / (shard.name + ".safetensors")
    tensors = {k: v.contiguous() for k, v in _load_pickle(shard).items()}
    seen: dict[int, str] = {}
    for name, tensor in list(tensors.items()):  # tied weights share storage; safetensors wants copies
        key = tensor.untyped_storage().data_ptr()
        if key in seen and tensor.numel():
            tensors[name] = tensor.clone()
        seen[key] = name
    save_file(tensors, str(out), metadata={"format": "pt"})
    return out


def open_model_folder(path: str | Path, allow_pickle: bool = False) -> ModelFolder:
    """Check a model folder and list its weight shards; each problem is one SteerfoldError line."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"model folder {path} does not exist: pass a local checkpoint folder")
    if not path.is_dir():
        raise BadInput(f"{path} is a file, not a model folder: pass the folder that holds config.json")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise BadInput(f"{path} has no config.json: pass a Hugging Face checkpoint folder")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{config_path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}): repair or re-download it") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise BadInput(f"{config_path} has no model_type: pass a Hugging Face causal LM checkpoint folder")

    safetensors_shards = _shards_from(path, SAFETENSORS_INDEX, "model.safetensors")
    if safetensors_shards:
        return ModelFolder(path, config, safetensors_shards, pickled=False)
    pickle_shards = _shards_from(path, PICKLE_INDEX, "pytorch_model.bin")
    if pickle_shards:
        if not allow_pickle:
            raise BadInput(
                f"{path} holds only pickled weights (pytorch_model*.bin), which can run code when loaded: "
                "convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        return ModelFolder(path, config, pickle_shards, pickled=True)
    raise BadInput(f"{path} has no model.safetensors or pytorch_model.bin weights: pass a complete checkpoint folder")


def _shards_from(path: Path, index_name: str, single_name: str) -> tuple[Path, ...]:
    index = path / index_name
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
            if not all(isinstance(name, str) for name in names + list(weight_map)):
                raise TypeError
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise BadInput(f"{index} is not a valid shard index: repair or re-download the checkpoint") from None
        for name in names:
            if Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
                raise BadInput(f"{index_name} names shard '{name}', outside the model folder: repair or re-download the checkpoint")
        shards = tuple(path / name for name in names)
        for shard in shards:
            if not shard.is_file():
                raise BadInput(f"shard {shard.name} listed in {index_name} is missing: re-download the checkpoint")
        if index_name == SAFETENSORS_INDEX:
            _check_index(index_name, weight_map, path)
        return shards
    single = path / single_name
    return (single,) if single.is_file() else ()


def _check_index(index_name: str, weight_map: dict[str, str], path: Path) -> None:
    """Every tensor the index names is in the shard it names (headers only)."""
    present: dict[str, set[str]] = {}
    for shard in sorted(set(weight_map.values())):
        present[shard] = {entry.name for entry in read_header(path / shard)[0]}
    for tensor, shard in sorted(weight_map.items()):
        if tensor not in present[shard]:
            raise BadInput(f"{index_name} places '{tensor}' in {shard}, which does not hold it: repair or re-download the checkpoint")


FLOATING = ("F64", "F32", "F16", "BF16")


def check_checkpoint(folder: ModelFolder) -> ModelLayout:
    """The model's layout, after checking that its tensors agree with config.json and the architecture: no block
    beyond num_hidden_layers, and every residual writer floating point (or stored in a quantized format steerfold
    dequantizes, ``editor.models.quantization``) with the hidden size where it writes. Another quantization format
    is refused here, in one line naming it."""
    quantization = quantization_of(folder.config, str(folder.path))
    if folder.pickled:
        if quantization is not None:
            raise BadInput(f"{folder.path} holds {quantization.label} weights as pickles: convert them to safetensors")
        return _checked_blocks(folder, folder.parameter_names())
    stored = [entry for shard in folder.shards for entry in read_header(shard)[0]]
    quantized = quantized_tensors(stored, quantization) if quantization else {}
    layout = _checked_blocks(folder, logical_names(stored, quantized))
    entries = {entry.name: entry for entry in stored}
    hidden = layout.hidden_size
    for writer in layout.writers:
        checks = [(key, kind) for key, kind in writer.tensors] + ([(writer.bias, "offset")] if writer.bias else [])
        checks += [(norm, "bias") for norm in writer.post_norms]
        for key, kind in checks:
            shape = quantized[key].shape if key in quantized else entries[key].shape
            if key not in quantized and entries[key].dtype not in FLOATING:
                raise BadInput(f"residual writer '{key}' is stored as {entries[key].dtype}; steerfold folds only "
                               f"floating-point weights ({', '.join(FLOATING)}) and FP8 or MXFP4 checkpoints that "
                               "config.json's quantization_config declares: dequantize the checkpoint first")
            if not _fits(shape, kind, hidden):
                raise BadInput(f"'{key}' has shape {list(shape)}, which does not write a hidden size of {hidden} "
                                     "(config.json): the checkpoint does not match its config; re-download or re-save it")
    return layout


def _checked_blocks(folder: ModelFolder, names: list[str]) -> ModelLayout:
    """The layout of these tensor names, refusing a checkpoint that stores more blocks than its config counts."""
    layout = resolve_layout(folder.config, names)
    blocks = re.compile(re.escape(layout.blocks) + r"\.(\d+)\.")
    stored = layout.num_layers + layout.extra_blocks
    extra = sorted({int(m.group(1)) for name in names if (m := blocks.match(name)) and int(m.group(1)) >= stored})
    if extra:
        raise BadInput(f"{folder.path} holds decoder block {extra[0]} but config.json says num_hidden_layers="
                             f"{layout.num_layers}: the checkpoint does not match its config; re-download or re-save it")
    return layout


def _fits(shape: tuple[int, ...], kind: str, hidden: int) -> bool:
    """Whether a tensor of this kind writes (or scales) vectors of the hidden size."""
    if kind == "embedding":
        return len(shape) == 2 and shape[1] == hidden
    if kind == "linear":
        return len(shape) == 2 and shape[0] == hidden
    if kind == "experts":
        return len(shape) == 3 and hidden in shape[1:]
    if kind == "experts_t":  # [E, inter, hidden]
        return len(shape) == 3 and shape[2] == hidden
    if kind == "offset":  # a writer's bias, or gpt-oss's one per expert
        return len(shape) in (1, 2) and shape[-1] == hidden
    return tuple(shape) == (hidden,)


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or hostile pickle
        raise BadInput(f"could not read pickled weights {path.name} ({type(exc).__name__}): convert them to safetensors") from None


def copy_side_files(source: Path, dest: Path) -> list[str]:
    """Copy everything that is not weights (config, tokenizer, generation config, chat template…)."""
    copied = []
    for item in sorted(source.iterdir()):
        if item.name in INDEX_FILES or item.name.endswith(WEIGHT_SUFFIXES) or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copy2(item, dest / item.name)
        copied.append(item.name)
    return copied


def update_config(dest: Path, **changes: object) -> None:
    """Rewrite keys of the copied config.json."""
    path = dest / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, indent=2) + "\n")

"""Reading checkpoints shard by shard and writing edited ones atomically.

A model folder holds ``config.json`` and either safetensors weights (``model.safetensors`` or shards with
``model.safetensors.index.json``) or, refused unless explicitly allowed, pickled ``pytorch_model*.bin``.
Output is written into a temporary folder beside the destination and renamed into place at the end, so a
failed or interrupted run leaves no partial output and never touches the input.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from editor.errors import SteerfoldError
from editor.stream import TensorEntry, read_header

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
        raise SteerfoldError(f"tensor '{sorted(missing)[0]}' is not in {folder.path}: the checkpoint is incomplete")
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
        raise SteerfoldError(f"model folder {path} does not exist: pass a local checkpoint folder")
    if not path.is_dir():
        raise SteerfoldError(f"{path} is a file, not a model folder: pass the folder that holds config.json")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise SteerfoldError(f"{path} has no config.json: pass a Hugging Face checkpoint folder")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SteerfoldError(f"{config_path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}): repair or re-download it") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise SteerfoldError(f"{config_path} has no model_type: pass a Hugging Face causal LM checkpoint folder")

    safetensors_shards = _shards_from(path, SAFETENSORS_INDEX, "model.safetensors")
    if safetensors_shards:
        return ModelFolder(path, config, safetensors_shards, pickled=False)
    pickle_shards = _shards_from(path, PICKLE_INDEX, "pytorch_model.bin")
    if pickle_shards:
        if not allow_pickle:
            raise SteerfoldError(
                f"{path} holds only pickled weights (pytorch_model*.bin), which can run code when loaded: "
                "convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        return ModelFolder(path, config, pickle_shards, pickled=True)
    raise SteerfoldError(f"{path} has no model.safetensors or pytorch_model.bin weights: pass a complete checkpoint folder")


def _shards_from(path: Path, index_name: str, single_name: str) -> tuple[Path, ...]:
    index = path / index_name
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SteerfoldError(f"{index} is not a valid shard index: repair or re-download the checkpoint") from None
        shards = tuple(path / name for name in sorted(set(weight_map.values())))
        for shard in shards:
            if not shard.is_file():
                raise SteerfoldError(f"shard {shard.name} listed in {index_name} is missing: re-download the checkpoint")
        return shards
    single = path / single_name
    return (single,) if single.is_file() else ()


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or hostile pickle
        raise SteerfoldError(f"could not read pickled weights {path.name} ({type(exc).__name__}): convert them to safetensors") from None


def check_output_path(out: Path, source: Path, overwrite: bool) -> None:
    """Refuse an output that is the input (or inside it), or that exists without ``overwrite``."""
    out_resolved, source_resolved = out.resolve(), source.resolve()
    if out_resolved == source_resolved:
        raise SteerfoldError(f"output {out} is the input folder: choose a new output folder (the input is never modified)")
    if source_resolved in out_resolved.parents:
        raise SteerfoldError(f"output {out} is inside the input folder {source}: choose a folder outside it")
    if out_resolved in source_resolved.parents:
        raise SteerfoldError(f"output {out} contains the input folder {source}: choose a folder that does not")
    if out.exists() and not overwrite:
        raise SteerfoldError(f"output {out} already exists: choose another folder or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise SteerfoldError(f"output {out} exists and is a file: choose a folder path")


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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

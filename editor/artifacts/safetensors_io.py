"""Safetensors headers and shard plans: read and check an input's header, plan output shards from input headers
and write each output header (``editor.artifacts.shard_writer`` streams the data after it).

Shapes and dtypes never change, so every output header is known before any data is read. Nothing here imports
torch, so a writer can start copying while torch is still being imported.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from typing import TYPE_CHECKING

from steerfold.errors import BadInput

if TYPE_CHECKING:
    import torch

# safetensors dtype → (torch dtype name, bytes per element). Nothing here imports torch, so that copying can start
# while torch is still being imported (see ShardWriter).
DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}


def torch_dtype(name: str) -> "torch.dtype":
    """The torch dtype of a safetensors dtype name."""
    import torch

    return getattr(torch, DTYPES[name][0])


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are in an input safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in the file
    nbytes: int

    def mapped(self) -> memoryview:
        """This tensor's bytes, mapped from the file rather than read (private copy-on-write pages: writing to
        them never changes the file); the mapping lives as long as the view or a tensor over it."""
        if self.nbytes == 0:
            return memoryview(bytearray())
        aligned = self.start - self.start % mmap.ALLOCATIONGRANULARITY
        try:
            with open(self.file, "rb") as handle:
                mapping = mmap.mmap(handle.fileno(), self.start + self.nbytes - aligned, offset=aligned, access=mmap.ACCESS_COPY)
        except ValueError:  # the file is shorter than its header says
            raise BadInput(f"{self.file} ended early while reading '{self.name}': the shard is truncated; re-download it") from None
        return memoryview(mapping)[self.start - aligned :]

    def load(self) -> "torch.Tensor":
        """Just this tensor, without copying it: its pages are read from the file as they are used."""
        import torch

        if self.nbytes == 0:
            return torch.empty(self.shape, dtype=torch_dtype(self.dtype))
        return torch.frombuffer(self.mapped(), dtype=torch_dtype(self.dtype)).reshape(self.shape)


def read_header(path: Path) -> tuple[list[TensorEntry], dict[str, str]]:
    """Tensor entries (in file order) and metadata of one safetensors file, without reading any data."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100 << 20:
                raise ValueError("header too large")
            header = json.loads(handle.read(size))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            file_size = os.fstat(handle.fileno()).st_size
    except (struct.error, ValueError, UnicodeDecodeError, OSError) as exc:
        raise BadInput(f"{path} is not a readable safetensors file ({exc}): re-download the checkpoint") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise BadInput(f"{path} has malformed metadata: re-download the checkpoint")
    base = 8 + size
    entries = []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not (all(isinstance(n, int) and n >= 0 for n in [*shape, begin, end]) and begin <= end):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"tensor '{name}' in {path.name} has a malformed header entry: the shard is corrupt; re-download it") from None
        if dtype not in DTYPES:
            raise BadInput(f"tensor '{name}' in {path.name} has dtype {dtype}, which steerfold cannot read yet")
        expected = math.prod(shape) * DTYPES[dtype][1]
        if end - begin != expected:
            raise BadInput(f"tensor '{name}' in {path.name} takes {end - begin} bytes where its shape and dtype need "
                                 f"{expected}: the shard is corrupt; re-download it")
        entries.append(TensorEntry(name, dtype, tuple(shape), path, base + begin, end - begin))
    entries.sort(key=lambda e: e.start)
    stored = [e for e in entries if e.nbytes]  # an empty tensor takes no bytes and may share an offset
    for before, after in zip(stored, stored[1:]):
        if after.start < before.start + before.nbytes:
            raise BadInput(f"tensors '{before.name}' and '{after.name}' in {path.name} overlap: the shard is corrupt; re-download it")
    needed = max((e.start + e.nbytes for e in entries), default=0)
    if needed > file_size:
        raise BadInput(f"{path} is shorter than its header says ({file_size} of {needed} bytes): the shard is truncated; re-download it")
    return entries, metadata


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of the output: its name, and the input entry its bytes (maybe edited) come from."""

    name: str
    source: TensorEntry
    editable: bool  # False: always copied as it is; True: the edit supplies its bytes, or leaves it as it is


def plan_shards(tensors: list[OutputTensor], max_shard_bytes: int | None) -> list[list[OutputTensor]]:
    """Group tensors into shards of at most ``max_shard_bytes`` (one tensor larger than that gets its own)."""
    if not max_shard_bytes:
        return [tensors]
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.source.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.source.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """Standard Hugging Face shard names."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def header_bytes(tensors: Iterable[OutputTensor], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for tensor in tensors:
        source = tensor.source
        header[tensor.name] = {"dtype": source.dtype, "shape": list(source.shape), "data_offsets": [offset, offset + source.nbytes]}
        offset += source.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


def write_index(dest: Path, weight_map: dict[str, str], total_size: int) -> None:
    """``model.safetensors.index.json`` with the total size and the sorted weight map."""
    index = {"metadata": {"total_size": total_size, "format": "pt"}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

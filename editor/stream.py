"""Streaming safetensors I/O: plan output shards from input headers, write each header before its data,
copy untouched tensors byte for byte, and transform the others one tensor at a time.

Peak memory is two buffers the size of the largest edited tensor, whatever the model or shard size (plus mapped
input pages waiting to be hashed): shapes and dtypes never change, so every output header is known before any
data is read. Inputs are mapped, not read; checksums are computed from the bytes as they are written, so no
output is read back.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import queue
import struct
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import torch

from editor.errors import SteerfoldError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
COPY_CHUNK = 64 << 20


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
            raise SteerfoldError(f"{self.file} ended early while reading '{self.name}': the shard is truncated; re-download it") from None
        return memoryview(mapping)[self.start - aligned :]

    def load(self) -> torch.Tensor:
        """Just this tensor, without copying it: its pages are read from the file as they are used."""
        if self.nbytes == 0:
            return torch.empty(self.shape, dtype=DTYPES[self.dtype])
        return torch.frombuffer(self.mapped(), dtype=DTYPES[self.dtype]).reshape(self.shape)

    def copy_to(self, out: BinaryIO) -> None:
        """Copy the raw bytes into ``out`` (in-kernel where the OS allows)."""
        with open(self.file, "rb") as handle:
            remaining, offset = self.nbytes, self.start
            out.flush()
            while remaining:
                step = min(remaining, COPY_CHUNK)
                try:
                    sent = os.copy_file_range(handle.fileno(), out.fileno(), step, offset)
                except (AttributeError, OSError):
                    handle.seek(offset)
                    sent = out.write(handle.read(step))
                if sent == 0:
                    raise SteerfoldError(f"{self.file} ended early while copying '{self.name}': the shard is truncated; re-download it")
                remaining -= sent
                offset += sent
            out.seek(0, os.SEEK_END)


def read_header(path: Path) -> tuple[list[TensorEntry], dict[str, str]]:
    """Tensor entries (in file order) and metadata of one safetensors file, without reading any data."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100 << 20:
                raise ValueError("header too large")
            header = json.loads(handle.read(size))
            file_size = os.fstat(handle.fileno()).st_size
    except (struct.error, ValueError, UnicodeDecodeError, OSError) as exc:
        raise SteerfoldError(f"{path} is not a readable safetensors file ({exc}): re-download the checkpoint") from None
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + size
    entries = []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not (all(isinstance(n, int) and n >= 0 for n in [*shape, begin, end]) and begin <= end):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise SteerfoldError(f"tensor '{name}' in {path.name} has a malformed header entry: the shard is corrupt; re-download it") from None
        if dtype not in DTYPES:
            raise SteerfoldError(f"tensor '{name}' in {path.name} has dtype {dtype}, which steerfold cannot read yet")
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise SteerfoldError(f"tensor '{name}' in {path.name} takes {end - begin} bytes where its shape and dtype need "
                                 f"{expected}: the shard is corrupt; re-download it")
        entries.append(TensorEntry(name, dtype, tuple(shape), path, base + begin, end - begin))
    entries.sort(key=lambda e: e.start)
    needed = max((e.start + e.nbytes for e in entries), default=0)
    if needed > file_size:
        raise SteerfoldError(f"{path} is shorter than its header says ({file_size} of {needed} bytes): the shard is truncated; re-download it")
    return entries, metadata


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of the output: its name, and the input entry its bytes (maybe transformed) come from."""

    name: str
    source: TensorEntry
    transform: bool  # False: copy the bytes as they are


Transform = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]  # (name, tensor, out): the edit, maybe in out


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


def _header_bytes(tensors: Iterable[OutputTensor], metadata: dict[str, str]) -> bytes:
    header: dict = {"__metadata__": metadata}
    offset = 0
    for tensor in tensors:
        source = tensor.source
        header[tensor.name] = {"dtype": source.dtype, "shape": list(source.shape), "data_offsets": [offset, offset + source.nbytes]}
        offset += source.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


class HashQueue:
    """One hashing thread for every shard, and the chunks waiting for it: each stays referenced until it is hashed,
    and at most ``MAX_PENDING_BYTES`` wait across all shards, so memory stays bounded when hashing falls behind
    writing. Tasks run in the order they are queued (one worker)."""

    MAX_PENDING_BYTES = 512 << 20

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._pending: deque[tuple[Future, int]] = deque()
        self._pending_bytes = 0

    def hash(self, sha: "hashlib._Hash", data: memoryview | bytes) -> None:
        """Queue ``sha.update(data)``, first waiting for older chunks while too many bytes wait."""
        while self._pending and self._pending_bytes + len(data) > self.MAX_PENDING_BYTES:
            future, size = self._pending.popleft()
            future.result()
            self._pending_bytes -= size
        self._pending.append((self._pool.submit(sha.update, data), len(data)))
        self._pending_bytes += len(data)

    def after_queued(self, task: Callable[[], object]) -> Future:
        """Run ``task`` once everything queued so far is hashed."""
        return self._pool.submit(task)


class ShardDigest:
    """SHA-256 of a file fed the very bytes written to it, in the background, so nothing is read back."""

    def __init__(self, queue: HashQueue) -> None:
        self._queue = queue
        self._sha = hashlib.sha256()

    def feed(self, data: memoryview | bytes) -> None:
        self._queue.hash(self._sha, data)

    def then(self, callback: Callable[[Future], None]) -> None:
        """Call ``callback`` once every chunk fed so far is hashed."""
        self._queue.after_queued(lambda: None).add_done_callback(callback)

    def hexdigest(self) -> Future:
        """The digest, once every chunk fed so far is hashed."""
        return self._queue.after_queued(self._sha.hexdigest)


class BufferRing:
    """A few reusable buffers that edited tensors are folded into. Writing fresh memory costs more CPU than the
    fold's arithmetic (every page is faulted in and zeroed first), so each buffer goes back to the ring once its
    tensor is written and hashed, and the next fold reuses its pages."""

    def __init__(self, nbytes: int, count: int) -> None:
        self._free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(torch.empty(nbytes, dtype=torch.uint8))

    def take(self, entry: TensorEntry) -> tuple[torch.Tensor, torch.Tensor]:
        """A free buffer (waiting for one) and a view of it with ``entry``'s dtype and shape."""
        buffer = self._free.get()
        return buffer, buffer[: entry.nbytes].view(DTYPES[entry.dtype]).view(entry.shape)

    def give_back(self, buffer: torch.Tensor) -> None:
        self._free.put(buffer)


def write_shards(
    shards: list[list[OutputTensor]], dest: Path, transform: Transform, digests: dict[str, str] | None = None
) -> dict[str, str]:
    """Write every planned shard into ``dest``; returns the weight map (tensor name → file name).

    Three threads share the work: edited tensors are computed one ahead in a background thread, into the two
    buffers of a ``BufferRing`` (memory: two of the largest edited tensor), this thread writes, and with
    ``digests`` a third hashes (sha256) each byte as it is written, from memory (the edited tensor, or the mapped
    source bytes of a copied one), never reading the output back; the hex digests land in ``digests`` by file
    name. On an error the fold under way is finished before the error surfaces, and the caller's atomic folder
    removes the partial output.
    """
    names = shard_names(len(shards))
    weight_map: dict[str, str] = {}
    pending: dict[str, Future] = {}
    to_edit = [t for shard in shards for t in shard if t.transform]
    ring = BufferRing(max((t.source.nbytes for t in to_edit), default=0), count=2)
    with _fold_threads(), ThreadPoolExecutor(max_workers=1) as hasher, ThreadPoolExecutor(max_workers=1) as folder:
        edited = _edited_in_order(to_edit, transform, ring, folder)
        hashing = HashQueue(hasher)
        for name, tensors in zip(names, shards):
            digest = ShardDigest(hashing) if digests is not None else None
            _write_shard(dest / name, tensors, edited, ring, digest)
            weight_map.update({t.name: name for t in tensors})
            if digest is not None:
                pending[name] = digest.hexdigest()
        for name, future in pending.items():
            digests[name] = future.result()
    return weight_map


@contextmanager
def _fold_threads() -> Iterator[None]:
    """Leave one core to the writer and one to the hasher: the fold gets the rest (at least one), not all of them
    (on two cores, torch's threads spinning beside the writer and hasher cost more than they bring)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - 2)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _edited_in_order(tensors: list[OutputTensor], transform: Transform, ring: BufferRing, pool
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The edited tensors of ``tensors`` in order, each with the ring buffer it was folded into (to give back once
    written and hashed); each next one is computed in ``pool`` while this one is written."""
    def compute(tensor: OutputTensor) -> tuple[torch.Tensor, torch.Tensor]:
        buffer, out = ring.take(tensor.source)
        edited = transform(tensor.name, tensor.source.load(), out)
        expected = (DTYPES[tensor.source.dtype], torch.Size(tensor.source.shape))
        if (edited.dtype, edited.shape) != expected:
            raise AssertionError(f"transform changed {tensor.name}: {edited.dtype}, {tuple(edited.shape)}")
        return edited, buffer

    ahead = pool.submit(compute, tensors[0]) if tensors else None
    for index in range(len(tensors)):
        current, ahead = ahead, pool.submit(compute, tensors[index + 1]) if index + 1 < len(tensors) else None
        yield current.result()


def _write_shard(path: Path, tensors: list[OutputTensor], edited: Iterator[tuple[torch.Tensor, torch.Tensor]],
                 ring: BufferRing, digest: ShardDigest | None) -> None:
    """Header first (shapes and dtypes are known), then each tensor: edited, or copied byte for byte."""
    feed = digest.feed if digest is not None else lambda _data: None
    with open(path, "wb") as out:
        header = _header_bytes(tensors, {"format": "pt"})
        out.write(header)
        feed(header)
        for tensor in tensors:
            if tensor.transform:
                tensor_out, buffer = next(edited)
                data = tensor_bytes(tensor_out)
                out.write(data)
                feed(data)
                if digest is not None:
                    digest.then(lambda _future, buffer=buffer: ring.give_back(buffer))
                else:
                    ring.give_back(buffer)
            else:
                tensor.source.copy_to(out)
                if digest is not None and tensor.source.nbytes:
                    feed(tensor.source.mapped())


def write_index(dest: Path, weight_map: dict[str, str], total_size: int) -> None:
    """``model.safetensors.index.json`` with the total size and the sorted weight map."""
    index = {"metadata": {"total_size": total_size, "format": "pt"}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def parse_size(text: str) -> int:
    """``5GB``, ``500MB``, ``2GiB`` or a byte count → bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1
    if unit not in units or value <= 0:
        raise SteerfoldError(f"--max-shard-size '{text}' is not a size: write e.g. 5GB, 500MB or 2GiB")
    return int(value * units[unit])

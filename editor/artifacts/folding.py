"""The edited bytes a streamed merged checkpoint writes: each editable tensor folded one ahead in a background
thread, into one of two reused buffers, while the shard writer copies the one before."""

from __future__ import annotations

import os
import queue
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from steerfold.artifacts.safetensors_io import OutputTensor, TensorEntry, torch_dtype
from steerfold.artifacts.shard_writer import EditedBytes

# (name, tensor, out) → the edited tensor (maybe written into out), or None where the edit leaves it as it is
Fold = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor | None]


class BufferRing:
    """Two reusable buffers that edited tensors are folded into. Writing fresh memory costs more CPU than the
    fold's arithmetic (every page is faulted in and zeroed first), so each buffer goes back to the ring once its
    tensor is copied into the output, and the next fold reuses its pages."""

    def __init__(self, nbytes: int, count: int) -> None:
        self._free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(torch.empty(nbytes, dtype=torch.uint8))

    def take(self, entry: TensorEntry) -> tuple[torch.Tensor, torch.Tensor]:
        """A free buffer (waiting for one) and a view of it with ``entry``'s dtype and shape."""
        buffer = self._free.get()
        return buffer, buffer[: entry.nbytes].view(torch_dtype(entry.dtype)).view(entry.shape)

    def give_back(self, buffer: torch.Tensor) -> None:
        self._free.put(buffer)


def folded_bytes(tensors: list[OutputTensor], fold: Fold) -> EditedBytes:
    """For each editable tensor of ``tensors`` in order, its edited bytes or None; each next one is folded in a
    background thread while this one is written (memory: two of the largest editable tensor). A yielded view is
    valid until the next one is asked for."""
    editable = [t for t in tensors if t.editable]
    ring = BufferRing(max((t.source.nbytes for t in editable), default=0), count=2)

    def compute(tensor: OutputTensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        buffer, out = ring.take(tensor.source)
        edited = fold(tensor.name, tensor.source.load(), out)
        expected = (torch_dtype(tensor.source.dtype), torch.Size(tensor.source.shape))
        if edited is not None and (edited.dtype, edited.shape) != expected:
            raise AssertionError(f"the fold changed {tensor.name}: {edited.dtype}, {tuple(edited.shape)}")
        return edited, buffer

    with _fold_threads(), ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(compute, editable[0]) if editable else None
        for index in range(len(editable)):
            current, ahead = ahead, pool.submit(compute, editable[index + 1]) if index + 1 < len(editable) else None
            edited, buffer = current.result()
            try:
                yield None if edited is None else _raw_bytes(edited)
            finally:
                ring.give_back(buffer)


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


@contextmanager
def _fold_threads() -> Iterator[None]:
    """Leave one core to the chunk filler and one to the hasher: the fold gets the rest (at least one), not all of
    them (on two cores, torch's threads spinning beside the filler and hasher cost more than they bring)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - 2)))
    try:
        yield
    finally:
        torch.set_num_threads(before)

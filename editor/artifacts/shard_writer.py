"""The shard writer: every output byte passes through a few fixed-size chunks, hashed from memory (so no output is
read back) and written with direct I/O where the file system allows it, so memory stays at those chunks whatever the
model or shard size. Untouched tensors are copied byte for byte; edited ones come from the caller
(``editor.artifacts.folding``) one tensor at a time. Nothing here imports torch."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from steerfold.artifacts.safetensors_io import OutputTensor, TensorEntry, header_bytes, shard_names
from steerfold.errors import BadInput, IOFailure, SteerfoldError


class ChunkPool:
    """The page-aligned chunks every output byte passes through on its way to disk. A chunk goes back to the pool
    once it is hashed and written, so the bytes in flight never exceed ``count`` chunks, however far hashing or
    the disk falls behind reading and folding."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(mmap.mmap(-1, size))  # anonymous maps start page-aligned, as direct I/O needs

    def take(self) -> mmap.mmap:
        return self._free.get()

    def give_back(self, chunk: mmap.mmap) -> None:
        self._free.put(chunk)


class OutputFile:
    """One output file, written in whole chunks. This thread fills a chunk (reading a copied tensor from its file
    straight into it, or copying an edited tensor's bytes); a hashing thread hashes it and a writing thread writes
    it while the next one fills. Where the file system allows, the file is opened for direct I/O: each chunk goes
    from memory to the disk without a copy into the page cache, which costs as much CPU as the rest of the edit.
    ``digest`` is the SHA-256 of the bytes written, so nothing is read back."""

    def __init__(self, path: Path, pool: ChunkPool, hasher: ThreadPoolExecutor, writer: ThreadPoolExecutor) -> None:
        self.path = path
        self._pool, self._hasher, self._writer = pool, hasher, writer
        self._sha = hashlib.sha256()
        self._fd, self._direct = _open_for_writing(path)
        self._chunk: mmap.mmap | None = None
        self._filled = 0
        self._size = 0
        self._writes: deque[Future] = deque()
        self._digest: Future | None = None

    def write(self, data: memoryview | bytes) -> None:
        """Append ``data`` (copied into the chunks)."""
        view = memoryview(data).cast("B")
        while view:
            space = self._space()
            step = min(len(space), len(view))
            space[:step] = view[:step]
            self._advance(step)
            view = view[step:]

    def copy_from(self, entry: TensorEntry) -> None:
        """Append the raw bytes of ``entry``, read from its file straight into the chunks."""
        try:
            with open(entry.file, "rb", buffering=0) as source:
                source.seek(entry.start)
                remaining = entry.nbytes
                while remaining:
                    space = self._space()
                    read = source.readinto(space[: min(len(space), remaining)])
                    if not read:
                        raise BadInput(f"{entry.file} ended early while copying '{entry.name}': the shard is truncated; re-download it")
                    self._advance(read)
                    remaining -= read
        except OSError as exc:
            raise BadInput(f"could not read '{entry.name}' from {entry.file}: {exc.strerror or exc}; "
                                 "check the disk or re-download the checkpoint") from None

    def close(self) -> None:
        """Queue the last chunk and the closing of the file."""
        if self._chunk is not None:
            self._send()
        self._writes.append(self._writer.submit(self._finish))
        self._digest = self._hasher.submit(self._sha.hexdigest)

    def digest(self) -> str:
        """The hex digest of the closed file, once every chunk is written; raises the error of a failed write."""
        self._check_writes(wait=True)
        return self._digest.result()

    def discard(self) -> None:
        """Stop writing after an error elsewhere: give back the chunk being filled and close the file once the
        queued writes are done (their errors are dropped: the caller removes the folder)."""
        if self._chunk is not None:
            self._pool.give_back(self._chunk)
            self._chunk = None
        self._writer.submit(os.close, self._fd)

    def _space(self) -> memoryview:
        """The free end of the chunk being filled (taking a new chunk when none is)."""
        if self._chunk is None:
            self._check_writes(wait=False)
            self._chunk, self._filled = self._pool.take(), 0
        return memoryview(self._chunk)[self._filled :]

    def _advance(self, count: int) -> None:
        self._filled += count
        if self._filled == self._pool.size:
            self._send()

    def _send(self) -> None:
        """Hash and write the chunk being filled; it goes back to the pool once both are done."""
        chunk, length = self._chunk, self._filled
        assert chunk is not None
        self._chunk = None
        hashed = self._hasher.submit(self._sha.update, memoryview(chunk)[:length])
        self._writes.append(self._writer.submit(self._write_chunk, chunk, length, hashed))
        self._size += length

    def _write_chunk(self, chunk: mmap.mmap, length: int, hashed: Future) -> None:
        try:
            # direct I/O writes whole blocks: the last chunk is padded with zeros, cut off again by _finish
            padded = length + (-length % ALIGN if self._direct else 0)
            chunk[length:padded] = bytes(padded - length)
            self._write_all(memoryview(chunk)[:padded])
        finally:
            hashed.result()
            self._pool.give_back(chunk)

    def _write_all(self, view: memoryview) -> None:
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except OSError as exc:
                if not (self._direct and exc.errno == errno.EINVAL):
                    raise _write_failed(self.path, exc) from None
                _drop_direct_io(self._fd, self.path)  # the file system took the flag but refuses the write: use the cache
                self._direct = False

    def _finish(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
            os.close(self._fd)
        except OSError as exc:  # some network file systems report a full disk only here
            raise _write_failed(self.path, exc) from None

    def _check_writes(self, wait: bool) -> None:
        """Raise the first failed write (waiting for all of them with ``wait``)."""
        while self._writes and (wait or self._writes[0].done()):
            self._writes.popleft().result()


ALIGN = 4096  # direct I/O: buffer address, file offset and length are multiples of the device's block size
CHUNK_BYTES = 32 << 20
CHUNK_COUNT = 4


def _open_for_writing(path: Path) -> tuple[int, bool]:
    """A new file's descriptor, and whether it writes with direct I/O (not every OS and file system offers it)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    direct = getattr(os, "O_DIRECT", 0)
    try:
        if direct:
            try:
                return os.open(path, flags | direct, 0o666), True
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
        return os.open(path, flags, 0o666), False
    except OSError as exc:
        raise _write_failed(path, exc) from None


def _drop_direct_io(fd: int, path: Path) -> None:
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
    except OSError as exc:
        raise _write_failed(path, exc) from None


def _write_failed(path: Path, exc: OSError) -> SteerfoldError:
    return IOFailure(f"could not write {path.name} in {path.parent}: {exc.strerror or exc}; "
                          "free space there or pass another --out")


EditedBytes = Iterator["memoryview | None"]  # for each editable tensor in order: its edited bytes, or None to copy it


class ShardWriter:
    """Writes planned shards into a folder in a background thread, which starts at once: it copies tensors until
    it meets the first editable one, then waits for ``supply`` to give the edited bytes. Planning editable tensors
    last lets the copying run while torch is imported and the edit is built.

    Every byte passes through the chunks of one ``ChunkPool``, each hashed (SHA-256, from memory, never reading
    the output back) by one thread and written by another. ``result`` returns the weight map (tensor name → file
    name) and each file's hex digest; ``cancel`` stops the writing (the caller's atomic folder removes the files).
    """

    def __init__(self, shards: list[list[OutputTensor]], dest: Path) -> None:
        self.shards = shards
        self._dest = dest
        self._edited: Future = Future()
        self._cancelled = threading.Event()
        self._outcome: tuple[dict[str, str], dict[str, str]] | BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="steerfold-shard-writer", daemon=True)
        self._thread.start()

    def supply(self, edited: EditedBytes) -> None:
        """The edited bytes of the editable tensors, in plan order; the writer closes the iterator when done."""
        self._edited.set_result(edited)

    def cancel(self) -> None:
        """Stop writing and wait for the writer to close its files."""
        self._cancelled.set()
        if not self._edited.done():
            self._edited.set_exception(_Cancelled())
        self._thread.join()

    def result(self) -> tuple[dict[str, str], dict[str, str]]:
        """Wait for every shard; the weight map and the digests by file name, or the error that stopped the writer."""
        self._thread.join()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def _run(self) -> None:
        try:
            self._outcome = self._write_all()
        except BaseException as exc:  # surfaces in the calling thread, from result()
            self._outcome = exc
        try:
            self._close_edited()
        except BaseException as exc:
            if not isinstance(self._outcome, BaseException):
                self._outcome = exc

    def _close_edited(self) -> None:
        """Close the supplied iterator, if any (a generator's close stops its folding thread)."""
        if self._edited.done() and self._edited.exception() is None:
            close = getattr(self._edited.result(), "close", None)
            if close is not None:
                close()

    def _write_all(self) -> tuple[dict[str, str], dict[str, str]]:
        weight_map: dict[str, str] = {}
        outputs: dict[str, OutputFile] = {}
        pool = ChunkPool(CHUNK_BYTES, CHUNK_COUNT)
        with ThreadPoolExecutor(max_workers=1) as hasher, ThreadPoolExecutor(max_workers=1) as writer:
            for name, tensors in zip(shard_names(len(self.shards)), self.shards):
                self._stop_if_cancelled()
                output = outputs[name] = OutputFile(self._dest / name, pool, hasher, writer)
                try:
                    self._write_shard(output, tensors)
                except BaseException:
                    output.discard()
                    raise
                output.close()
                weight_map.update({t.name: name for t in tensors})
            return weight_map, {name: output.digest() for name, output in outputs.items()}

    def _write_shard(self, output: OutputFile, tensors: list[OutputTensor]) -> None:
        """Header first (shapes and dtypes are known), then each tensor: edited, or copied byte for byte."""
        output.write(header_bytes(tensors, {"format": "pt"}))
        for tensor in tensors:
            self._stop_if_cancelled()
            data = next(self._edited.result()) if tensor.editable else None  # waits for supply() the first time
            if data is None:
                output.copy_from(tensor.source)
            else:
                output.write(data)

    def _stop_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise _Cancelled()


class _Cancelled(Exception):
    """The caller stopped the writer."""

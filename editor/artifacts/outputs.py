"""One rule for every command that writes, so that no run of steerfold loses or alters a user's file.

- An output is never equal to, inside, or a parent of any input (model, direction, condition, prompts, recipe,
  base), after resolving symlinks.
- ``--overwrite`` replaces only what steerfold wrote before: a folder holding ``MARKER`` (or a run folder), or a
  file the caller recognises (a direction file records ``format_version``); an empty folder may be used as is.
- Before any compute: the output location must be writable (the temporary output is created at once) and have
  room for an estimate of the output's size.
- One process at a time writes an output: an exclusive lock (``.NAME.lock`` beside it, ``LOCK`` inside a run
  folder) makes a second one fail at once.
- Output is written beside the destination under a hidden name (``.NAME.tmp-XXXXXXXX``) and renamed into place
  only when complete, with the permissions the user's umask gives (as ``cp`` would). Leftovers of a killed run
  are recognised by that name and removed by the next run on the same output, or by ``steerfold clean OUT``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

from steerfold.errors import OutputRefused
from steerfold.interrupts import held

MARKER = ".steerfold"  # inside every folder steerfold writes; never uploaded, checksummed or copied
RUN_STATE = ".steerfold-run.json"  # what a run folder has finished (``editor.pipeline.run``)
OutputKind = Literal["folder", "file", "workdir"]  # workdir: a folder written in place (a run folder)
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-[A-Za-z0-9_]{8}$")
SPACE_MARGIN = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shared_mode(path: Path, umask: int | None = None) -> None:
    """Give a file or folder made private by ``tempfile`` the mode the user's umask gives new ones."""
    base = 0o777 if path.is_dir() else 0o666
    path.chmod(base & ~(_umask() if umask is None else umask))


LOCK = ".steerfold.lock"  # a workdir's lock, inside it (its parent may be a read-only mount point)


def shared_modes(folder: Path) -> None:
    """The umask's modes for everything inside ``folder`` (some libraries write private files, e.g. safetensors)."""
    umask = _umask()
    for path in folder.rglob("*"):
        if not path.is_symlink():
            shared_mode(path, umask)


def lock_path(out: Path, kind: OutputKind = "folder") -> Path:
    """Where the lock of an output is: beside a folder or file output, inside a workdir."""
    return out / LOCK if kind == "workdir" else out.parent / f".{out.name}.lock"


def leftovers(out: Path) -> list[Path]:
    """Temporaries a killed run on ``out`` left beside it, recognised by their names."""
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if (m := LEFTOVER.match(p.name)) and m.group("name") == out.name)


def leftovers_inside(folder: Path) -> list[Path]:
    """Temporaries anywhere inside a folder steerfold writes in place (a run folder's exports and caches)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob(".*") if LEFTOVER.match(p.name) or (p.name.endswith(".lock") and p != folder / LOCK))


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_apart(out: Path, inputs: Iterable[Path | str | None], flag: str = "--out") -> None:
    """Refuse an output that is an input, lies inside an input folder, or contains an input."""
    target = _resolved(out, flag)
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        source = _resolved(given, "input")
        if target == source:
            raise OutputRefused(f"{flag} {out} is the input {given}: choose a new output path (inputs are never modified)")
        if source.is_dir() and source in target.parents:
            raise OutputRefused(f"{flag} {out} is inside the input folder {given}: choose a path outside it")
        if target in source.parents:
            raise OutputRefused(f"{flag} {out} contains the input {given}: choose a path that does not")


def _resolved(path: Path | str, flag: str) -> Path:
    """``path`` with symlinks resolved; a symlink loop or a NUL byte is one error line."""
    try:
        resolved = Path(path).resolve()
    except (RuntimeError, OSError, ValueError) as exc:
        raise OutputRefused(f"{flag} {path} cannot be resolved ({exc}): pass a plain path") from None
    if not resolved.name:
        raise OutputRefused(f"{flag} {path} is the root folder: choose a folder below it")
    return resolved


def is_steerfold_folder(folder: Path) -> bool:
    return (folder / MARKER).is_file()


class OutputTarget:
    """An output being written under the rules above; ``path`` is where to write (the temporary, or the folder
    itself for a workdir). Use ``open_output``."""

    def __init__(self, out: Path, kind: OutputKind, overwrite: bool, flag: str,
                 recognise: Callable[[Path], bool] | None) -> None:
        self.out, self.kind, self.overwrite, self.flag = _resolved(out, flag), kind, overwrite, flag
        self._recognise = recognise or (lambda _path: False)
        self._lock_fd: int | None = None
        self._temporary: Path | None = None  # what abandon() removes: only what this process created
        self.path = self.out

    def check_existing(self) -> None:
        """Refuse an existing output of the wrong kind, one without --overwrite, or one steerfold did not write."""
        try:
            self._check_existing()
        except OSError as exc:
            raise OutputRefused(f"cannot read {self.out} ({exc.strerror or exc}): choose another {self.flag}") from None

    def _check_existing(self) -> None:
        out = self.out
        if not (out.exists() or out.is_symlink()):
            return
        want_folder = self.kind != "file"
        if want_folder and not out.is_dir():
            raise OutputRefused(f"{self.flag} {out} exists and is a file: choose a folder path")
        if not want_folder and out.is_dir():
            raise OutputRefused(f"{self.flag} {out} exists and is a folder: choose a file path")
        if want_folder and not [p for p in out.iterdir() if p.name != LOCK]:
            return  # an empty folder holds nothing to lose
        if not self.overwrite:
            what = "folder" if want_folder else "path"
            raise OutputRefused(f"{self.flag} {out} already exists: choose another {what} or pass --overwrite")
        if not self._ours(out):
            raise OutputRefused(f"{self.flag} {out} was not written by steerfold, and --overwrite replaces only "
                                 "steerfold's own outputs: remove it yourself or choose another path")

    def _ours(self, out: Path) -> bool:
        return (self.kind != "file" and is_steerfold_folder(out)) or self._recognise(out)

    def open(self, needs_bytes: int) -> None:
        """Lock the output, remove a killed run's leftovers, and create the temporary output (proving the location
        is writable) with room for ``needs_bytes``; all before any compute. On failure nothing is left."""
        parent = self.out.parent
        try:
            (self.out if self.kind == "workdir" else parent).mkdir(parents=True, exist_ok=True)
            self._lock()
            self.check_existing()  # again, now that no other steerfold process can be writing it
            inside = leftovers_inside(self.out) if self.kind == "workdir" and self._ours(self.out) else []
            for path in leftovers(self.out) + inside:
                remove(path)
            where = self.out if self.kind == "workdir" else parent
            free = shutil.disk_usage(where).free
            if free < needs_bytes + SPACE_MARGIN:
                raise OutputRefused(f"{where} has {free / 1e9:.2f} GB free but {self.out.name} needs about "
                                     f"{(needs_bytes + SPACE_MARGIN) / 1e9:.2f} GB: free space there or choose another {self.flag}")
            self.path = self._create_temporary()
        except OSError as exc:
            self.release()
            raise OutputRefused(f"cannot write {self.out} ({exc.strerror or exc}): choose a writable {self.flag}") from None
        except BaseException:
            self.release()
            raise

    def _create_temporary(self) -> Path:
        if self.kind == "workdir":
            probe = Path(tempfile.mkstemp(prefix=f".{MARKER}.tmp-", dir=self.out)[1])
            os.replace(probe, self.out / MARKER)
            return self.out
        prefix = f".{self.out.name}.tmp-"
        if self.kind == "folder":
            self._temporary = Path(tempfile.mkdtemp(prefix=prefix, dir=self.out.parent))
        else:
            handle, name = tempfile.mkstemp(prefix=prefix, dir=self.out.parent)
            os.close(handle)
            self._temporary = Path(name)
        shared_mode(self._temporary)
        return self._temporary

    def commit(self) -> None:
        """Move the finished output into place, replacing a recognised old one. Signals wait until the swap is done,
        and a failed swap puts the old output back."""
        if self.kind == "workdir":
            return
        if self.kind == "folder":
            (self.path / MARKER).write_text("written by steerfold; --overwrite may replace this folder\n")
            shared_modes(self.path)
        self.check_existing()  # something outside steerfold may have appeared at the path meanwhile
        with held():
            if self.kind == "file":
                os.replace(self.path, self.out)
            elif self.out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
                old.rmdir()
                self.out.rename(old)
                try:
                    self.path.rename(self.out)
                except BaseException:
                    old.rename(self.out)
                    raise
                remove(old)
            else:
                self.path.rename(self.out)
            self._temporary = None

    def abandon(self) -> None:
        """Remove the temporary output, if this process made one (a second signal meanwhile waits)."""
        with held():
            if self._temporary is not None:
                remove(self._temporary)
                self._temporary = None

    def _lock(self) -> None:
        import fcntl

        lock = lock_path(self.out, self.kind)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputRefused(f"another steerfold process is writing {self.out} now: wait for it to finish, "
                                     f"or choose another {self.flag}") from None
            try:
                current = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:  # the last holder removed it between our open and our lock
                current = False
            if current:
                self._lock_fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        with held():
            if self._lock_fd is not None:
                lock_path(self.out, self.kind).unlink(missing_ok=True)
                os.close(self._lock_fd)
                self._lock_fd = None


@contextmanager
def open_output(out: Path, kind: OutputKind = "folder", inputs: Iterable[Path | str | None] = (), overwrite: bool = False,
                flag: str = "--out", needs_bytes: int = 0, recognise: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Check ``out`` against the rules above, then yield where to write it; on success the output replaces ``out``,
    on any failure or interrupt it is removed. Enter this before any compute."""
    check_apart(out, inputs, flag)
    target = OutputTarget(out, kind, overwrite, flag, recognise)
    target.check_existing()
    try:
        target.open(needs_bytes)
        yield target.path
        try:
            target.commit()
        except OSError as exc:
            raise OutputRefused(f"cannot write {out} ({exc.strerror or exc}): choose a writable {flag}") from None
    except BaseException:
        target.abandon()
        raise
    finally:
        target.release()


@contextmanager
def replace_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that replaces it only if the block succeeds: for files inside an
    output steerfold already holds (a run folder's cache), so no lock or overwrite rule applies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        shared_mode(tmp)
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def cache_entry(target: Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``target`` that becomes ``target`` only if the block succeeds: a cache
    entry filled once (when another process finished the same entry first, its copy is kept). On any failure or
    interrupt the temporary is removed, so a cache never holds a partial entry."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name[:16]}.", suffix=".tmp", dir=target.parent))
    try:
        shared_mode(work)
        yield work
        shared_modes(work)
        try:
            work.rename(target)
        except OSError:
            if not target.is_dir():  # not another process having finished the same entry
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def clean(out: Path) -> list[Path]:
    """Remove what killed runs left at ``out``: temporaries beside it and, in a steerfold folder, inside it. Refused
    while another steerfold process is writing ``out``."""
    out = _resolved(out, "OUT")
    if not out.parent.is_dir():
        return []
    run_folder = out.is_dir() and ((out / RUN_STATE).is_file()
                                   or (is_steerfold_folder(out) and not (out / "SHA256SUMS").is_file()))
    target = OutputTarget(out, "workdir" if run_folder else "folder", overwrite=True, flag="OUT", recognise=None)
    try:
        target._lock()
        try:
            found = leftovers(out)
            if out.is_dir() and (is_steerfold_folder(out) or run_folder):
                found += leftovers_inside(out)
            for path in found:
                remove(path)
        finally:
            target.release()
    except OSError as exc:
        raise OutputRefused(f"cannot clean {out} ({exc.strerror or exc}): check its permissions") from None
    return found

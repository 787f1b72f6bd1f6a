"""``SHA256SUMS`` beside every artifact (``sha256sum -c`` reads it too) and ``steerfold verify``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from steerfold.errors import BadInput, SteerfoldError
from steerfold.artifacts.safetensors_io import read_header

SUMS = "SHA256SUMS"
CHUNK = 16 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_files(folder: Path) -> list[Path]:
    """Every file of an artifact folder except the sums themselves, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))  # as push skips them


def write_checksums(folder: Path, known: dict[str, str] | None = None) -> int:
    """Write ``SHA256SUMS`` listing every file under ``folder`` (``known``: digests already computed, by relative
    name, for files written in this run); returns how many were listed."""
    known = known or {}
    files = artifact_files(folder)
    lines = [f"{known.get(rel) or sha256_of(p)}  {rel}" for p in files for rel in [p.relative_to(folder).as_posix()]]
    (folder / SUMS).write_text("\n".join(lines) + "\n")
    return len(files)


def verify(folder: Path) -> list[str]:
    """Problems found in an artifact folder (empty when it is intact): sums, then the shard index. An entry that
    names a path outside the folder, or a file that is a symlink out of it, is a problem, never read."""
    folder = Path(folder)
    sums_path = folder / SUMS
    if not sums_path.is_file():
        raise BadInput(f"{folder} has no {SUMS}: only folders written by steerfold can be verified")
    try:
        text = sums_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return [f"{SUMS} is not a text file: it is corrupt; re-export the artifact"]
    problems: list[str] = []
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            problems.append(f"{SUMS}:{number} is malformed")
        elif (outside := _outside(folder, name)) is not None:
            problems.append(f"{SUMS}:{number} names {name}, {outside}")
        else:
            listed[name] = digest
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_of(path) != digest:
            problems.append(f"{name} does not match its checksum")
    for path in artifact_files(folder):
        name = path.relative_to(folder).as_posix()
        if (outside := _outside(folder, name)) is not None:
            problems.append(f"{name} is {outside}")
        elif name not in listed:
            problems.append(f"{name} is not listed in {SUMS}")
    problems += _index_problems(folder)
    return problems


def _outside(folder: Path, name: str) -> str | None:
    """Why ``name`` does not stay inside ``folder`` (absolute, climbing out, or a symlink out), or None."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        return "a path outside the folder"
    try:
        inside = folder.resolve() in (folder / relative).resolve().parents
    except (OSError, RuntimeError, ValueError):  # a NUL byte, a symlink loop
        return "not a usable path"
    return None if inside else "a symlink out of the folder"


def _index_problems(folder: Path) -> list[str]:
    """The shard index must name existing shards, and each tensor must be in the shard it names."""
    index_path = folder / "model.safetensors.index.json"
    if not index_path.is_file():
        return []
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return ["model.safetensors.index.json is not a valid index"]
    problems = []
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or _outside(folder, shard) is not None:
            problems.append(f"model.safetensors.index.json places {tensor} in {shard}, outside the folder")
            continue
        by_shard.setdefault(shard, set()).add(tensor)
    for shard, tensors in sorted(by_shard.items()):
        if not (folder / shard).is_file():
            problems.append(f"index names {shard}, which is missing")
            continue
        try:
            present = {entry.name for entry in read_header(folder / shard)[0]}
        except SteerfoldError:
            problems.append(f"{shard} has an unreadable header")
            continue
        if missing := tensors - present:
            problems.append(f"{shard} lacks {len(missing)} tensor(s) the index places there, e.g. {sorted(missing)[0]}")
        if extra := present - tensors:
            problems.append(f"{shard} holds {len(extra)} tensor(s) the index does not list, e.g. {sorted(extra)[0]}")
    return problems

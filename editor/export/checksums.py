"""``SHA256SUMS`` beside every artifact (``sha256sum -c`` reads it too) and ``steerfold verify``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from editor.errors import SteerfoldError
from editor.stream import read_header

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
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS and not p.name.startswith("."))


def write_checksums(folder: Path, known: dict[str, str] | None = None) -> int:
    """Write ``SHA256SUMS`` listing every file under ``folder`` (``known``: digests already computed, by relative
    name, for files written in this run); returns how many were listed."""
    known = known or {}
    files = artifact_files(folder)
    lines = [f"{known.get(rel) or sha256_of(p)}  {rel}" for p in files for rel in [p.relative_to(folder).as_posix()]]
    (folder / SUMS).write_text("\n".join(lines) + "\n")
    return len(files)


def verify(folder: Path) -> list[str]:
    """Problems found in an artifact folder (empty when it is intact): sums, then the shard index."""
    folder = Path(folder)
    sums_path = folder / SUMS
    if not sums_path.is_file():
        raise SteerfoldError(f"{folder} has no {SUMS}: only folders written by steerfold can be verified")
    problems: list[str] = []
    listed: dict[str, str] = {}
    for number, line in enumerate(sums_path.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            problems.append(f"{SUMS}:{number} is malformed")
            continue
        listed[name] = digest
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_of(path) != digest:
            problems.append(f"{name} does not match its checksum")
    for path in artifact_files(folder):
        if path.relative_to(folder).as_posix() not in listed:
            problems.append(f"{path.relative_to(folder).as_posix()} is not listed in {SUMS}")
    problems += _index_problems(folder)
    return problems


def _index_problems(folder: Path) -> list[str]:
    """The shard index must name existing shards, and each tensor must be in the shard it names."""
    index_path = folder / "model.safetensors.index.json"
    if not index_path.is_file():
        return []
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return ["model.safetensors.index.json is not a valid index"]
    problems = []
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
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

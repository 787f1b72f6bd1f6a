"""llama.cpp's own converter for the opt-in tier: ``convert_hf_to_gguf.py`` (with its ``conversion`` package and
``gguf-py``) read out of llama-cpp-python's PyPI source distribution, the same release whose bindings ``make
test-real`` builds from source. An edited checkpoint that llama.cpp converts and runs with the logits transformers
gives is one a llama.cpp or Ollama user can take.

The source distribution is downloaded (never built or installed by this module) and only those files are extracted,
under ``$STEERFOLD_CACHE/llama.cpp/VERSION/``.

    python tests/realweights/llamacpp.py      # fetch once, then print the converter's path
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repository root holds `editor`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from steerfold.errors import SteerfoldError  # noqa: E402

PACKAGE, VERSION = "llama-cpp-python", "0.3.36"  # also pinned in constraints.txt, for the bindings
VENDORED = "vendor/llama.cpp/"
WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def cache() -> Path:
    return Path(os.environ.get("STEERFOLD_CACHE") or Path.home() / ".cache" / "steerfold") / "llama.cpp" / VERSION


def converter() -> Path:
    """``convert_hf_to_gguf.py`` of llama.cpp as vendored by llama-cpp-python ``VERSION`` (fetched once)."""
    script = cache() / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    with tempfile.TemporaryDirectory() as downloads:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "--disable-pip-version-check",
                   "--quiet", "--dest", downloads, f"{PACKAGE}=={VERSION}"]
        done = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(Path(downloads).glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no archive"])[-1][:200]
            raise SteerfoldError(f"pip could not download the {PACKAGE} {VERSION} sources ({last}): check that PyPI is reachable")
        _extract(archives[0], cache())
    return script


def _extract(archive: Path, dest: Path) -> None:
    """The converter's files of ``archive`` into ``dest``, whole or not at all (plain files only)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".llama.cpp.", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                inside = member.name.partition("/")[2]
                if not inside.startswith(VENDORED) or not member.isfile():
                    continue
                relative = inside[len(VENDORED):]
                if relative.startswith(WANTED) and ".." not in Path(relative).parts:
                    target = staging / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as source, target.open("wb") as out:
                        shutil.copyfileobj(source, out)
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise SteerfoldError(f"{archive.name} has no {VENDORED}convert_hf_to_gguf.py: the package changed")
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert(checkpoint: Path, out: Path, outtype: str = "f32") -> Path:
    """``checkpoint`` (a transformers folder) as a GGUF file at ``out``, by llama.cpp's converter."""
    done = subprocess.run([sys.executable, str(converter()), str(checkpoint), "--outfile", str(out), "--outtype", outtype],
                          capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise SteerfoldError(f"llama.cpp's convert_hf_to_gguf.py failed on {checkpoint}:\n{tail}")
    return out


if __name__ == "__main__":
    try:
        print(f"converter   {converter()}")
    except SteerfoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

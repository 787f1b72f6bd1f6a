"""MODEL as a GGUF file: converted once into a cached float32 safetensors folder that the rest of steerfold reads.

A GGUF holds quantized blocks; transformers dequantizes them when it loads the file, and the edit is made on those
dequantized weights. They are written in float32, which holds every dequantized value exactly (each is a block
scale times a small integer, or a float16 / bfloat16 value), so the converted folder is the GGUF's model, not an
approximation of it.

The conversion is keyed by the file's SHA-256 under ``$STEERFOLD_CACHE`` (default ``~/.cache/steerfold``) in
``gguf/<sha256>``. It is written into a hidden temporary folder beside that and renamed into place at the end, so
the cache never holds a partial conversion, whatever stops it (an error, Ctrl-C). torch and transformers are
imported only when a file is converted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from steerfold.artifacts.outputs import cache_entry
from steerfold.errors import BadInput, IOFailure

GGUF_MAGIC = b"GGUF"
SUFFIX = ".gguf"
CHUNK = 16 * 1024 * 1024
MAX_SHARD = 5 * 1024**3


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cache_root_default() -> Path:
    """``$STEERFOLD_CACHE``, or ``~/.cache/steerfold``."""
    return Path(os.environ.get("STEERFOLD_CACHE") or Path.home() / ".cache" / "steerfold")


def is_gguf_input(path: str | Path) -> bool:
    """A path ending in .gguf, or a folder holding exactly one *.gguf and no config.json."""
    path = Path(path)
    if path.suffix.lower() == SUFFIX:
        return True
    if not path.is_dir() or (path / "config.json").exists():
        return False
    return len(_gguf_files(path)) == 1


def _gguf_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _gguf_file(path: Path) -> Path:
    """The .gguf file that ``path`` names (itself, or the only one in a folder); a SteerfoldError otherwise."""
    if path.is_dir():
        found = _gguf_files(path)
        if len(found) != 1:
            raise BadInput(f"{path} holds {len(found)} .gguf files: pass one .gguf file")
        path = found[0]
    if not path.exists():
        raise BadInput(f"{path} does not exist: pass a .gguf file")
    if not path.is_file():
        raise BadInput(f"{path} is not a file: pass a .gguf file")
    if "-of-" in path.stem and path.stem.rsplit("-of-", 1)[-1].isdigit():
        raise BadInput(f"{path.name} is one part of a split GGUF: merge the parts into one file first "
                             "(llama.cpp's llama-gguf-split --merge)")
    return path


def sha256_file(path: Path, what: str = "") -> str:
    """The file's SHA-256, with a progress bar on an interactive terminal."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    bar = None
    if sys.stderr.isatty() and size > 4 * CHUNK:
        from tqdm.auto import tqdm

        bar = tqdm(total=size, desc=what or f"SHA-256 of {path.name}", unit="B", unit_scale=True, leave=False)
    try:
        with open(path, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
                if bar is not None:
                    bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    return digest.hexdigest()


class _Truncated(Exception):
    def __init__(self, needed: int, size: int):
        super().__init__(needed, size)
        self.needed, self.size = needed, size


def read_gguf(path: Path):
    """gguf-py's ``GGUFReader`` over the whole file, refusing any read past its end (a truncated file)."""
    from gguf import GGUFReader

    class BoundedReader(GGUFReader):
        # Every read of GGUFReader goes through _get; it would silently return a short array past the end.
        def _get(self, offset, dtype, count=1, override_order=None):
            import numpy as np

            end = int(offset) + int(np.empty([], dtype=dtype).itemsize) * int(count)
            if end > self.data.size:
                raise _Truncated(end, int(self.data.size))
            return super()._get(offset, dtype, count, override_order)

    return BoundedReader(path)


def _check_magic(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise IOFailure(f"cannot read {path} ({exc.strerror or exc}): check its permissions") from None
    if magic != GGUF_MAGIC:
        raise BadInput(f"{path.name} is not a GGUF file (no GGUF magic): pass a .gguf file written by llama.cpp")


def check_gguf(path: Path):
    """The file's GGUFReader once the file is known to be a whole GGUF; one SteerfoldError line otherwise."""
    _check_magic(path)
    try:
        reader = read_gguf(path)
    except _Truncated as exc:
        raise BadInput(f"{path.name} is truncated (it has {exc.size:,} bytes; reading it whole needs at least "
                             f"{exc.needed:,}): download it again") from None
    except Exception as exc:  # any other malformed header, metadata or tensor table
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise BadInput(f"{path.name} is not a readable GGUF file ({reason}): download it again, or pass a "
                             ".gguf file written by llama.cpp") from None
    if not reader.tensors:
        raise BadInput(f"{path.name} holds no tensors: pass a GGUF file of a model")
    if "general.architecture" not in reader.fields:
        raise BadInput(f"{path.name} has no general.architecture in its metadata: pass a GGUF file of a model")
    return reader


def _field_text(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (IndexError, UnicodeDecodeError, TypeError):
        return None


def convert_gguf(path: str | Path, cache_root: str | Path | None = None, say: Callable[[str], None] = _stderr,
                 expected_sha256: str | None = None) -> Path:
    """A folder holding ``path``'s model as float32 safetensors, config.json and its tokenizer (converted once,
    cached by the file's SHA-256). ``expected_sha256``, when given, must match the file. Every bad input is one
    SteerfoldError line, and nothing is left in the cache after a failure."""
    gguf = _gguf_file(Path(path))
    root = Path(cache_root) if cache_root is not None else cache_root_default()
    _check_magic(gguf)
    digest = sha256_file(gguf)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise BadInput(f"{gguf.name} has SHA-256 {digest}, not the expected {expected_sha256.lower()}: "
                             "download it again, or check that it is the intended file")
    target = root / "gguf" / digest
    if (target / "config.json").is_file():
        say(f"{gguf.name}: using its float32 conversion (dequantized weights) cached in {target}")
        return target
    reader = check_gguf(gguf)
    kinds = sorted({t.tensor_type.name for t in reader.tensors})
    nbytes = 4 * sum(int(t.n_elements) for t in reader.tensors)
    template = _field_text(reader, "tokenizer.chat_template")
    del reader  # its memory map is not needed past here
    say(f"{gguf.name} ({', '.join(kinds)}): the edit is made on its dequantized weights, written once in float32 "
        f"(exact for the dequantized values, about {_size(nbytes)}) to {target}")
    try:
        with cache_entry(target) as work:
            _write_conversion(gguf, work, template)
    except OSError as exc:
        raise IOFailure(f"cannot write the conversion of {gguf.name} under {target.parent} "
                        f"({exc.strerror or exc}): free space there or set STEERFOLD_CACHE to another folder") from None
    return target


def _write_conversion(gguf: Path, out: Path, template: str | None) -> None:
    """Load ``gguf`` dequantized through transformers and write it to ``out`` as a plain checkpoint folder."""
    from steerfold.interrupts import load_torch

    load_torch()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # an architecture, tokenizer or tensor type transformers cannot load from GGUF
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadInput(f"transformers cannot load {gguf.name} ({reason}): pass the model's safetensors "
                             "checkpoint folder instead") from None
    # The GGUF quantizer stays attached and save_pretrained refuses the model: write the tensors directly.
    state = {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    _save_state(state, out, save_file)
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)  # the folder the GGUF was loaded from
    config["dtype"] = "float32"
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    try:
        model.generation_config.save_pretrained(out)
    except Exception:  # a generation config is optional for steerfold
        pass
    if template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    if template and not _has_chat_template(out):
        (out / "chat_template.jinja").write_text(template)


def _save_state(state: dict, out: Path, save_file) -> None:
    """One model.safetensors, or shards of at most MAX_SHARD bytes with their index."""
    total = sum(t.numel() * t.element_size() for t in state.values())
    if total <= MAX_SHARD:
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors", max_shard_size=MAX_SHARD)
    for filename, names in split.filename_to_tensors.items():
        save_file({name: state[name] for name in names}, str(out / filename), metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(config.is_file() and json.loads(config.read_text()).get("chat_template"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False

"""Streaming export: bitwise equal to the in-memory fold, standard shard names, sizes respected."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from cli import cli
from conftest import LAYERS, build_tiny_model, random_direction, write_direction
from steerfold.edit.edits import ablation_edit
from steerfold.edit.fold import fold_model
from steerfold.errors import SteerfoldError
from steerfold.artifacts.safetensors_io import read_header
from steerfold.edit.spec import parse_size


def load_all(folder):
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            tensors.update({k: handle.get_tensor(k) for k in handle.keys()})
    return tensors


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_output_is_bitwise_the_in_memory_fold(tmp_path, tied):
    model = build_tiny_model("qwen2", tie_word_embeddings=tied).to(torch.bfloat16)
    folder = tmp_path / "base"
    model.save_pretrained(folder, max_shard_size="60KB")
    direction = random_direction()
    result = CliRunner().invoke(cli, ["edit", str(folder), "--direction", str(write_direction(tmp_path / "d.safetensors", direction)),
                                      "--out", str(tmp_path / "out"), "--max-shard-size", "90KB"])
    assert result.exit_code == 0, result.output

    fold_model(model, ablation_edit(direction, range(LAYERS + 1)))
    expected = {k: v for k, v in model.state_dict().items()}
    streamed = load_all(tmp_path / "out")
    assert set(streamed) == set(expected) | ({"lm_head.weight"} if tied else set())
    for name, tensor in streamed.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, expected[name]), name

    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(streamed) and set(index["weight_map"].values()) == set(files)
    for path in (tmp_path / "out").glob("*.safetensors"):
        entries, metadata = read_header(path)
        assert metadata == {"format": "pt"}
        big = [e.nbytes for e in entries]
        assert sum(big) <= 90_000 or len(big) == 1


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("100KB") == 100_000
    for bad in ("", "GB", "-1MB", "5XB"):
        with pytest.raises(SteerfoldError, match="max-shard-size"):
            parse_size(bad)


def edit_into_small_shards(tmp_path) -> None:
    """A tiny llama in 60 KB shards, ablated into 50 KB output shards at tmp_path/out."""
    model = build_tiny_model("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base", max_shard_size="60KB")
    direction = write_direction(tmp_path / "d.safetensors", random_direction())
    result = CliRunner().invoke(cli, ["edit", str(tmp_path / "base"), "--direction", str(direction),
                                      "--out", str(tmp_path / "out"), "--max-shard-size", "50KB"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("slow_hasher", [False, True])
def test_sums_are_the_written_bytes_hashed_in_memory(tmp_path, monkeypatch, slow_hasher):
    """The digests computed while writing (never read back) equal a fresh sha256 of every file on disk, also when
    hashing lags far behind filling (a chunk must not be reused before it is hashed)."""
    import hashlib
    import time

    sha256 = hashlib.sha256

    class SlowSha:
        def __init__(self) -> None:
            self._sha = sha256()

        def update(self, data) -> None:
            time.sleep(0.01)
            self._sha.update(data)

        def hexdigest(self) -> str:
            return self._sha.hexdigest()

    if slow_hasher:
        monkeypatch.setattr("steerfold.artifacts.shard_writer.hashlib.sha256", SlowSha)
        small_chunks(monkeypatch)
    edit_into_small_shards(tmp_path)
    listed = dict(line.split("  ")[::-1] for line in (tmp_path / "out" / "SHA256SUMS").read_text().splitlines())
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 2 and set(shards) <= set(listed)
    for name, digest in listed.items():
        assert sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("cut", ["edited", "copied"])
def test_a_truncated_shard_is_one_line_and_no_output(tmp_path, cut):
    model = build_tiny_model("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    shard = tmp_path / "base" / "model.safetensors"
    entries, _ = read_header(shard)
    # the file ends inside the last tensor of the chosen kind (edited: a residual writer; copied: anything else)
    edited = [e for e in entries if e.name.endswith(("o_proj.weight", "down_proj.weight", "embed_tokens.weight"))]
    victim = (edited if cut == "edited" else [e for e in entries if e not in edited])[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: victim.start + victim.nbytes // 2])
    before = shard.read_bytes()
    direction = write_direction(tmp_path / "d.safetensors", random_direction())
    result = CliRunner().invoke(cli, ["edit", str(tmp_path / "base"), "--direction", str(direction), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "truncated" in lines[0] and "re-download" in lines[0], result.output
    assert not (tmp_path / "out").exists() and shard.read_bytes() == before


@pytest.mark.parametrize("damage,message", [
    (lambda entry: entry.update(shape=[entry["shape"][0] // 2, entry["shape"][1]]), "corrupt"),  # half the rows
    (lambda entry: entry.update(shape="big"), "malformed"),
    (lambda entry: entry.update(shape=[-1]), "malformed"),
    (lambda entry: entry.pop("data_offsets"), "malformed"),
])
def test_a_damaged_header_entry_is_one_line(tmp_path, damage, message):
    import struct

    model = build_tiny_model("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    shard = tmp_path / "base" / "model.safetensors"
    data = shard.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    name = next(n for n in header if n.endswith("o_proj.weight"))
    damage(header[name])
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= size
    raw += b" " * (size - len(raw))
    shard.write_bytes(data[:8] + raw + data[8 + size :])
    before = shard.read_bytes()
    direction = write_direction(tmp_path / "d.safetensors", random_direction())
    result = CliRunner().invoke(cli, ["edit", str(tmp_path / "base"), "--direction", str(direction), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and message in lines[0], result.output
    assert not (tmp_path / "out").exists() and shard.read_bytes() == before


@pytest.mark.parametrize("model_type", ["llama", "mixtral", "phi"])
def test_folding_into_a_used_buffer_is_the_fresh_fold(model_type):
    """The streamed export folds into reused buffers: for every edited tensor (fused experts and biases
    included) the result equals the fold into fresh memory, whatever the buffer held before."""
    from steerfold.models.arch import layout_of_model
    from steerfold.edit.fold import fold_tensor

    model = build_tiny_model(model_type).to(torch.bfloat16)
    layout = layout_of_model(model)
    edit = ablation_edit(random_direction(), range(LAYERS + 1))
    maps = edit.module_maps(layout, lambda key: model.get_parameter(key).data)
    edited = [key for key, tensor in model.state_dict().items() if fold_tensor(key, tensor, layout, maps) is not tensor]
    assert any("expert" in key for key in edited) == (model_type == "mixtral")
    for key in edited:
        tensor = model.get_parameter(key).data
        used = torch.full_like(tensor, 7.0)
        result = fold_tensor(key, tensor, layout, maps, used)
        assert torch.equal(result, fold_tensor(key, tensor, layout, maps)), key
        assert result.data_ptr() == used.data_ptr() or "bias" in key, key


def test_bytes_in_flight_are_bounded_by_the_chunks_across_files(monkeypatch, tmp_path):
    """Filling waits once every chunk waits for the hasher, whichever file the chunks belong to; once hashing
    resumes both files are written whole and their digests are of what was written."""
    import hashlib
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from steerfold.artifacts.shard_writer import ALIGN, ChunkPool, OutputFile

    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as hasher, ThreadPoolExecutor(max_workers=1) as writer:
        hasher.submit(gate.wait)  # the hasher is busy until the gate opens
        pool = ChunkPool(ALIGN, 2)
        first, second = OutputFile(tmp_path / "a", pool, hasher, writer), OutputFile(tmp_path / "b", pool, hasher, writer)
        first.write(b"x" * ALIGN)  # one full chunk, waiting to be hashed
        first.write(b"x" * 10)
        first.close()  # the second chunk waits too: no chunk is left
        filling = threading.Thread(target=second.write, args=(b"y" * (ALIGN + 10),))
        filling.start()
        filling.join(timeout=0.3)
        assert filling.is_alive()
        gate.set()
        filling.join(timeout=5)
        assert not filling.is_alive()
        second.close()
        assert first.digest() == hashlib.sha256(b"x" * (ALIGN + 10)).hexdigest()
        assert second.digest() == hashlib.sha256(b"y" * (ALIGN + 10)).hexdigest()
    assert (tmp_path / "a").read_bytes() == b"x" * (ALIGN + 10) and (tmp_path / "b").read_bytes() == b"y" * (ALIGN + 10)


def small_chunks(monkeypatch) -> None:
    """Chunks of one block, two of them: every tiny shard spans many chunks and each chunk is reused often."""
    import steerfold.artifacts.shard_writer as stream

    monkeypatch.setattr(stream, "CHUNK_BYTES", stream.ALIGN)
    monkeypatch.setattr(stream, "CHUNK_COUNT", 2)


def test_output_through_small_chunks_is_the_output_through_large_ones(tmp_path, monkeypatch):
    edit_into_small_shards(tmp_path / "large")
    small_chunks(monkeypatch)
    edit_into_small_shards(tmp_path / "small")
    names = sorted(p.name for p in (tmp_path / "large" / "out").glob("model*"))
    assert names == sorted(p.name for p in (tmp_path / "small" / "out").glob("model*")) and len(names) > 3
    for name in names:
        assert (tmp_path / "large" / "out" / name).read_bytes() == (tmp_path / "small" / "out" / name).read_bytes(), name


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_a_file_system_without_direct_io_gets_the_same_files(tmp_path, monkeypatch, refused_at):
    """Where the file system refuses direct I/O, when opening or only at the first write, the edit goes through
    the page cache instead and writes the same bytes."""
    import errno
    import fcntl
    import os

    import steerfold.artifacts.shard_writer as stream

    if not hasattr(os, "O_DIRECT"):
        pytest.skip("this OS has no direct I/O")
    edit_into_small_shards(tmp_path / "direct")
    refused = []
    real_open, real_write = os.open, os.write

    def refusing_open(path, flags, *args, **kwargs):
        if refused_at == "open" and flags & os.O_DIRECT:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    def refusing_write(fd, data):
        if refused_at == "write" and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    small_chunks(monkeypatch)
    monkeypatch.setattr(stream.os, "open", refusing_open)
    monkeypatch.setattr(stream.os, "write", refusing_write)
    edit_into_small_shards(tmp_path / "cached")
    shards = sorted(p.name for p in (tmp_path / "direct" / "out").glob("*.safetensors"))
    assert len(refused) >= len(shards) > 2
    for name in [*shards, "model.safetensors.index.json"]:
        assert (tmp_path / "direct" / "out" / name).read_bytes() == (tmp_path / "cached" / "out" / name).read_bytes(), name


def test_a_full_disk_is_one_line_and_no_output(tmp_path, monkeypatch):
    import errno

    import steerfold.artifacts.shard_writer as stream

    model = build_tiny_model("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base", max_shard_size="60KB")
    direction = write_direction(tmp_path / "d.safetensors", random_direction())
    written = []

    def filling_write(fd, data):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        return len(data)

    small_chunks(monkeypatch)
    monkeypatch.setattr(stream.os, "write", filling_write)
    result = CliRunner().invoke(cli, ["edit", str(tmp_path / "base"), "--direction", str(direction), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "--out" in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_copying_starts_before_the_edit_is_built(tmp_path, monkeypatch):
    """The tensors no edit can change are written while the edit is still being built (torch imported, the
    direction read): building waits here until a shard has bytes on disk, and fails the edit if none come."""
    import time

    import steerfold.edit.build as edit_build

    real = edit_build.build_edit
    seen: list[int] = []

    def waiting_build(request, layout):
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            seen.extend(p.stat().st_size for p in tmp_path.glob(".out.tmp-*/model-*.safetensors") if p.stat().st_size)
            time.sleep(0.01)
        if not seen:
            raise AssertionError("no shard was written before the edit was built")
        return real(request, layout)

    monkeypatch.setattr(edit_build, "build_edit", waiting_build)
    edit_into_small_shards(tmp_path)
    assert seen and (tmp_path / "out" / "SHA256SUMS").is_file()


def test_a_tied_checkpoint_that_stores_its_head_is_untied(tmp_path):
    """A tied model whose checkpoint also stores lm_head.weight: editing the embedding unties the config, and the
    stored head stays the unedited embedding."""
    from safetensors.torch import load_file, save_file

    model = build_tiny_model("qwen2", tie_word_embeddings=True).to(torch.bfloat16)
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    embedding = tensors["model.embed_tokens.weight"]
    tensors["lm_head.weight"] = embedding.clone()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    direction = write_direction(tmp_path / "d.safetensors", random_direction())
    result = CliRunner().invoke(cli, ["edit", str(folder), "--direction", str(direction), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False
    written = load_all(tmp_path / "out")
    assert torch.equal(written["lm_head.weight"], embedding)
    assert not torch.equal(written["model.embed_tokens.weight"], embedding)


def test_a_failed_open_is_one_line_and_no_output(tmp_path, monkeypatch):
    """An output file that cannot be created for another reason than direct I/O (here: too many open files) is one
    error line, not a traceback, and leaves nothing behind."""
    import errno

    import steerfold.artifacts.shard_writer as stream

    model = build_tiny_model("llama").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    direction = write_direction(tmp_path / "d.safetensors", random_direction())

    real_open = stream.os.open  # the os module's own: rmtree uses it too

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).endswith(".safetensors") and flags & stream.os.O_WRONLY:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(stream.os, "open", refusing_open)
    result = CliRunner().invoke(cli, ["edit", str(tmp_path / "base"), "--direction", str(direction), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Too many open files" in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

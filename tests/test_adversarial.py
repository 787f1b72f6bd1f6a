"""Adversarial cases: outputs that would land on inputs, interrupts and faults, corrupt checkpoints accepted as
good, and inputs that used to end in a traceback. Each asserts the exit code, one line, unchanged inputs and no
partial or hidden leftovers. Signal cases run the real console entry point in a subprocess; the repeated SIGINT
run is behind the ``adversarial`` marker (``pytest -m adversarial``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from cli import cli
from conftest import build_tiny_model, folder_digest, save_tiny_model, write_direction
from steerfold.research.organism import DATA_DIR, SHIPPED_CHECKPOINT
from steerfold.artifacts.outputs import LEFTOVER, OutputTarget

ROOT = Path(__file__).parents[1]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result, code: int = 2, *fragments: str) -> str:
    """The one line a failed command printed (anything before it is the portability table or progress)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith(("error:", "FAILED:"))]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def hidden_leftovers(*folders: Path) -> list[Path]:
    """Temporaries and locks steerfold may leave beside or inside outputs."""
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.rglob(".*") if LEFTOVER.match(p.name) or p.name.endswith(".lock")]
    return found


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny llama checkpoint (no tokenizer): enough for edit, inspect and verify."""
    return save_tiny_model(build_tiny_model("llama"), tmp_path_factory.mktemp("adv") / "tiny")


@pytest.fixture()
def organism(tmp_path) -> Path:
    """A copy of the organism (a chat model with a tokenizer), so fit, validate and run can be pointed at it."""
    return Path(shutil.copytree(SHIPPED_CHECKPOINT, tmp_path / "organism"))


def copy_of(folder: Path, dest: Path) -> Path:
    return Path(shutil.copytree(folder, dest))


def prompts(tmp_path: Path, kind: str = "harmful", count: int = 8) -> Path:
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("\n".join((DATA_DIR / f"{kind}_train.jsonl").read_text().splitlines()[:count]) + "\n")
    return path


def edited_copy(tiny: Path, tmp_path: Path) -> Path:
    out = tmp_path / "edited"
    assert invoke("edit", tiny, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", out).exit_code == 0
    return out


# ---------------------------------------------------------------- outputs never land on inputs


def recipe_for(model: Path, tmp_path: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""name: adversarial
model: {model}
prompts:
  harmful: {{organism: harmful/train}}
  harmless: {{organism: harmless/train}}
fit: {{method: diff_in_means, harmful: harmful, harmless: harmless}}
edit: {{kind: ablation}}
export: {{formats: [lora]}}
""")
    return recipe


@pytest.mark.parametrize("where", ["model", "parent"])
def test_run_overwrite_never_deletes_the_model(organism, tmp_path, where):
    before = folder_digest(organism)
    out = organism if where == "model" else organism.parent
    error_line(invoke("run", recipe_for(organism, tmp_path), "--out", out, "--overwrite"), 2,
               "is the input" if where == "model" else "contains the input")
    assert folder_digest(organism) == before


def test_run_overwrite_never_wipes_a_folder_that_is_not_a_run(organism, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    error_line(invoke("run", recipe_for(organism, tmp_path), "--out", mine, "--overwrite"), 2, "not written by steerfold")
    assert (mine / "notes.txt").read_text() == "keep" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_run_out_an_existing_file(organism, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    error_line(invoke("run", recipe_for(organism, tmp_path), "--out", target, "--resume"), 2, "is a file")
    assert target.read_text() == "keep"


@pytest.mark.parametrize("inside", ["model.safetensors", "d.safetensors"])
def test_fit_never_writes_into_the_model(organism, tmp_path, inside):
    before = folder_digest(organism)
    result = invoke("fit", organism, "--harmful", prompts(tmp_path), "--harmless", prompts(tmp_path, "harmless"),
                    "--out", organism / inside, "--overwrite")
    error_line(result, 2, "is inside the input folder")
    assert folder_digest(organism) == before


def test_fit_overwrite_replaces_only_a_direction_file(organism, tmp_path):
    mine = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(3)}, str(mine))
    before = mine.read_bytes()
    error_line(invoke("fit", organism, "--harmful", prompts(tmp_path), "--harmless", prompts(tmp_path, "harmless"),
                      "--out", mine, "--overwrite"), 2, "not written by steerfold")
    assert mine.read_bytes() == before


def test_validate_never_writes_into_the_base(tiny, tmp_path):
    before = folder_digest(tiny)
    error_line(invoke("validate", edited_copy(tiny, tmp_path), "--base", tiny, "--harmful", prompts(tmp_path),
                      "--harmless", prompts(tmp_path, "harmless"), "--out", tiny / "report"), 2, "inside the input folder")
    assert folder_digest(tiny) == before


def test_edit_never_deletes_its_direction_file(tiny, tmp_path):
    holder = tmp_path / "x"
    holder.mkdir()
    direction = write_direction(holder / "d.safetensors")
    before = direction.read_bytes()
    error_line(invoke("edit", tiny, "--direction", direction, "--out", holder, "--overwrite"), 2, "contains the input")
    assert direction.read_bytes() == before


def test_symlinked_output_onto_the_model_is_refused(tiny, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tiny)
    before = folder_digest(tiny)
    error_line(invoke("edit", tiny, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", link, "--overwrite"),
               2, "is the input")
    assert folder_digest(tiny) == before


# ---------------------------------------------------------------- locations checked before any compute


def fit_must_not_run(monkeypatch):
    import steerfold.directions.fit

    def boom(*_args, **_kwargs):
        raise AssertionError("the fit ran before the output location was checked")

    monkeypatch.setattr(steerfold.directions.fit, "run_fit", boom)


def test_unwritable_output_fails_before_the_fit(organism, tmp_path, monkeypatch):
    fit_must_not_run(monkeypatch)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    error_line(invoke("fit", organism, "--harmful", prompts(tmp_path), "--harmless", prompts(tmp_path, "harmless"),
                      "--out", blocker / "d.safetensors"), 2, "cannot write", "--out")


def test_read_only_location_fails_before_the_fit(organism, tmp_path, monkeypatch):
    import errno
    import tempfile

    fit_must_not_run(monkeypatch)

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    error_line(invoke("fit", organism, "--harmful", prompts(tmp_path), "--harmless", prompts(tmp_path, "harmless"),
                      "--out", tmp_path / "d.safetensors"), 2, "Read-only file system")
    assert not (tmp_path / "d.safetensors").exists() and not hidden_leftovers(tmp_path)


def test_full_location_fails_before_the_edit(tiny, tmp_path, monkeypatch):
    import steerfold.artifacts.outputs

    monkeypatch.setattr(steerfold.artifacts.outputs.shutil, "disk_usage", lambda _path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    error_line(invoke("edit", tiny, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "out"),
               2, "GB free", "free space")
    assert not (tmp_path / "out").exists() and not hidden_leftovers(tmp_path)


def test_a_second_writer_of_the_same_output_fails_at_once(tiny, tmp_path):
    out = tmp_path / "out"
    holder = OutputTarget(out, "folder", overwrite=False, flag="--out", recognise=None)
    holder._lock()  # another steerfold process holding the output
    try:
        error_line(invoke("edit", tiny, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", out), 2,
                   "another steerfold process is writing")
    finally:
        holder.release()
    assert not out.exists() and not hidden_leftovers(tmp_path)


def test_an_output_that_appears_meanwhile_is_not_replaced(tiny, tmp_path, monkeypatch):
    import steerfold.artifacts.export as edit_checkpoint

    out = tmp_path / "out"
    real = edit_checkpoint.write_card

    def someone_else_writes(*args, **kwargs):
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
        return real(*args, **kwargs)

    monkeypatch.setattr(edit_checkpoint, "write_card", someone_else_writes)
    error_line(invoke("edit", tiny, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", out), 2, "already exists")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"] and not hidden_leftovers(tmp_path)


def test_killed_runs_leftovers_are_removed_by_the_next_run_and_by_clean(tiny, tmp_path):
    stale = tmp_path / ".out.tmp-abcd1234"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".other.tmp-abcd1234").mkdir()  # another output's: not ours to remove
    assert invoke("edit", tiny, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "out").exit_code == 0
    assert not stale.exists() and (tmp_path / ".other.tmp-abcd1234").is_dir()
    (tmp_path / ".out.old-zzzz9999").mkdir()
    result = invoke("clean", tmp_path / "out")
    assert result.exit_code == 0 and "1 leftover(s) removed" in result.output
    assert not (tmp_path / ".out.old-zzzz9999").exists() and (tmp_path / "out" / "model.safetensors").is_file()


def test_resume_after_an_interrupted_fit(organism, tmp_path, monkeypatch):
    import steerfold.directions.fit

    recipe, out = recipe_for(organism, tmp_path), tmp_path / "run"

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steerfold.directions.fit, "run_fit", interrupted)
    result = invoke("run", recipe, "--out", out)
    assert result.exit_code == 130 and "--resume" in result.output
    (out / ".lora.tmp-abcd1234").mkdir()  # as a SIGKILL during an export leaves it
    (out / ".cache" / ".validate-x.json.tmp-abcd1234").write_text("")

    def stops(*_args, **_kwargs):
        raise steerfold.directions.fit.SteerfoldError("the resumed run reached the fit")

    monkeypatch.setattr(steerfold.directions.fit, "run_fit", stops)
    error_line(invoke("run", recipe, "--out", out, "--resume"), 2, "the resumed run reached the fit")
    assert not hidden_leftovers(out) and not hidden_leftovers(tmp_path)


# ---------------------------------------------------------------- corrupt checkpoints are refused


def rewrite_header(shard: Path, change) -> None:
    """Rewrite a safetensors header in place (same data) after ``change(header)``."""
    raw = shard.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    change(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    data = raw[8 + size :]
    shard.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def retype(name: str, dtype: str):
    def change(header):
        header[name]["dtype"] = dtype
        begin = header[name]["data_offsets"][0]
        count = 1
        for n in header[name]["shape"]:
            count *= n
        header[name]["data_offsets"] = [begin, begin + count * {"I32": 4, "F32": 4}[dtype]]
    return change


def overlap(header):
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    a, b = header[names[0]], header[names[1]]
    if a["shape"] == b["shape"] and a["dtype"] == b["dtype"]:
        b["data_offsets"] = list(a["data_offsets"])
    else:
        header[names[1]] = dict(a)


def wrong_shape(header):
    entry = header["model.layers.0.self_attn.o_proj.weight"]
    rows, cols = entry["shape"]
    entry["shape"] = [cols, rows] if rows != cols else [rows // 2, cols * 2]


def fewer_layers(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] -= 1
    (folder / "config.json").write_text(json.dumps(config))


def index_names(folder: Path, tensor: str | None = None, shard: str | None = None) -> None:
    weights = folder / "model.safetensors"
    names = [k for k in json.loads(weights.read_bytes()[8 : 8 + struct.unpack("<Q", weights.read_bytes()[:8])[0]]) if k != "__metadata__"]
    weight_map = {name: "model.safetensors" for name in names}
    if tensor:
        weight_map[tensor] = "model.safetensors"
    if shard:
        weight_map[names[0]] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


CORRUPT = {
    "integer writer": (lambda f: rewrite_header(f / "model.safetensors", retype("model.layers.0.mlp.down_proj.weight", "I32")), "floating-point"),
    "overlapping offsets": (lambda f: rewrite_header(f / "model.safetensors", overlap), "overlap"),
    "writer of the wrong shape": (lambda f: rewrite_header(f / "model.safetensors", wrong_shape), "does not write a hidden size"),
    "fewer layers in the config": (fewer_layers, "num_hidden_layers"),
    "index names a missing tensor": (lambda f: index_names(f, tensor="model.layers.9.mlp.down_proj.weight"), "does not hold it"),
    "index climbs out of the folder": (lambda f: index_names(f, shard="../../other/model.safetensors"), "outside the model folder"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_checkpoints_are_refused_by_edit(tiny, tmp_path, case):
    corrupt, fragment = CORRUPT[case]
    folder = copy_of(tiny, tmp_path / "corrupt")
    corrupt(folder)
    before = folder_digest(folder)
    error_line(invoke("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "out"),
               2, fragment)
    assert folder_digest(folder) == before and not (tmp_path / "out").exists() and not hidden_leftovers(tmp_path)


def test_wrong_shaped_writer_is_one_line_in_validate(tiny, tmp_path):
    folder = copy_of(tiny, tmp_path / "corrupt")
    rewrite_header(folder / "model.safetensors", wrong_shape)
    error_line(invoke("validate", folder, "--base", tiny, "--harmful", prompts(tmp_path), "--harmless",
                      prompts(tmp_path, "harmless"), "--out", tmp_path / "report"), 2, "does not write a hidden size")
    assert not (tmp_path / "report").exists() and not hidden_leftovers(tmp_path)


def test_truncated_shard_is_one_line_in_validate(tiny, tmp_path):
    edited = edited_copy(tiny, tmp_path)
    shard = edited / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    error_line(invoke("validate", edited, "--base", tiny, "--harmful", prompts(tmp_path), "--harmless",
                      prompts(tmp_path, "harmless"), "--out", tmp_path / "report"), 2, "truncated")


def test_validate_refuses_a_base_of_another_shape_before_generating(tiny, tmp_path):
    other = save_tiny_model(build_tiny_model("llama", hidden_size=32, intermediate_size=48), tmp_path / "other")
    start = time.perf_counter()
    error_line(invoke("validate", edited_copy(tiny, tmp_path), "--base", other, "--harmful", prompts(tmp_path),
                      "--harmless", prompts(tmp_path, "harmless"), "--out", tmp_path / "report"), 2, "hidden_size 64", "--base")
    assert time.perf_counter() - start < 30 and not (tmp_path / "report").exists()


@pytest.mark.parametrize("entry", ["../../outside.txt", "/etc/hostname", "link.txt"])
def test_verify_refuses_entries_out_of_the_folder(tiny, tmp_path, entry):
    edited = edited_copy(tiny, tmp_path)
    (tmp_path / "outside.txt").write_text("outside")
    if entry == "link.txt":
        (edited / "link.txt").symlink_to(tmp_path / "outside.txt")
    sums = edited / "SHA256SUMS"
    sums.write_text(sums.read_text() + f"{'0' * 64}  {entry}\n")
    result = invoke("verify", edited)
    assert result.exit_code == 1 and ("out of the folder" in result.output or "outside the folder" in result.output), result.output
    assert "Traceback" not in result.output


def test_verify_of_a_binary_sums_file(tiny, tmp_path):
    edited = edited_copy(tiny, tmp_path)
    (edited / "SHA256SUMS").write_bytes(bytes(range(256)))
    error_line(invoke("verify", edited), 1, "not a text file")


def test_push_refuses_a_tampered_folder(tiny, tmp_path):
    edited = edited_copy(tiny, tmp_path)
    (edited / "config.json").write_text((edited / "config.json").read_text() + " ")
    error_line(invoke("push", edited, "me/edited", "--dry-run"), 2, "fails steerfold verify", "config.json")


# ---------------------------------------------------------------- what used to be a traceback


def test_direction_with_a_layer_that_is_not_a_number(tiny, tmp_path):
    direction = write_direction(tmp_path / "d.safetensors", layer="twelve")
    error_line(invoke("edit", tiny, "--direction", direction, "--out", tmp_path / "out"), 2, "twelve", "--layer")


def test_empty_direction_tensor(tiny, tmp_path):
    save_file({"direction": torch.zeros(0)}, str(tmp_path / "d.safetensors"))
    error_line(invoke("edit", tiny, "--direction", tmp_path / "d.safetensors", "--out", tmp_path / "out"), 2, "empty")


def test_negative_max_new_tokens(tiny, tmp_path):
    error_line(invoke("validate", tiny, "--base", tiny, "--harmful", prompts(tmp_path), "--harmless",
                      prompts(tmp_path, "harmless"), "--out", tmp_path / "r", "--max-new-tokens", "-5"), 2, "--max-new-tokens")


def adapter_of(organism: Path, tmp_path: Path) -> Path:
    direction = write_direction(tmp_path / "d.safetensors", torch.nn.functional.normalize(torch.randn(
        json.loads((organism / "config.json").read_text())["hidden_size"]), dim=0))
    out = tmp_path / "adapter"
    assert invoke("edit", organism, "--direction", direction, "--out", out, "--format", "lora").exit_code == 0
    return out


@pytest.mark.parametrize("damage", ["broken json", "targets nothing"])
def test_broken_adapters_are_one_line(organism, tmp_path, damage):
    adapter = adapter_of(organism, tmp_path)
    config = adapter / "adapter_config.json"
    if damage == "broken json":
        config.write_text("{not json")
    else:
        data = json.loads(config.read_text())
        data["target_modules"] = ["no_such_module"]
        config.write_text(json.dumps(data))
    error_line(invoke("validate", adapter, "--base", organism, "--harmful", prompts(tmp_path), "--harmless",
                      prompts(tmp_path, "harmless"), "--out", tmp_path / "report"), 2,
               "not valid JSON" if damage == "broken json" else "does not apply")
    assert not (tmp_path / "report").exists() and not hidden_leftovers(tmp_path)


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, ("[" * 20000 + "]" * 20000).encode()], ids=["binary", "20000 deep"])
def test_unreadable_recipes(tmp_path, content):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(content)
    error_line(invoke("run", recipe, "--out", tmp_path / "run"), 2)
    assert not (tmp_path / "run").exists()


def test_recipe_naming_a_missing_model(tmp_path):
    error_line(invoke("run", recipe_for(tmp_path / "nowhere", tmp_path), "--out", tmp_path / "run"), 2, "model.path", "does not exist")
    assert not (tmp_path / "run").exists()


def test_organism_seed_beyond_64_bits(tmp_path):
    error_line(invoke("organism", "build", "--out", tmp_path / "o", "--seed", str(2**64)), 2, "--seed")


def test_usage_errors_are_one_line(tmp_path):
    error_line(invoke("edit", "--out", tmp_path / "o"), 2, "MODEL_DIR", "--help")


# ---------------------------------------------------------------- signals, through the real entry point


def steerfold(*args: object, **kwargs) -> subprocess.Popen:
    code = "import sys; sys.argv[0] = 'steerfold'; from steerfold.cli import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def bigger(tmp_path_factory) -> Path:
    """A checkpoint large enough (about 60 MB) that an edit of it is caught mid-write."""
    model = build_tiny_model("llama", hidden_size=512, intermediate_size=1536, num_hidden_layers=6, vocab_size=4096)
    return save_tiny_model(model, tmp_path_factory.mktemp("adv-big") / "bigger")


def interrupt_edit(bigger: Path, tmp_path: Path, sig: int, delay: float = 0.0) -> tuple[int, str]:
    """Start an edit, send ``sig`` ``delay`` seconds after its hidden output exists; (exit code, stderr)."""
    direction = tmp_path / "d.safetensors"
    if not direction.exists():
        write_direction(direction, torch.nn.functional.normalize(torch.randn(512), dim=0))
    process = steerfold("edit", bigger, "--direction", direction, "--out", tmp_path / "out")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.tmp-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_edit_cleans_up_and_exits_with_the_signal_code(bigger, tmp_path, sig, code):
    before = folder_digest(bigger)
    returncode, stderr = interrupt_edit(bigger, tmp_path, sig)
    assert returncode == code, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == ["interrupted: nothing partial was left at the output"]
    assert not (tmp_path / "out").exists() and not hidden_leftovers(tmp_path)
    assert folder_digest(bigger) == before


def test_sigkill_leftovers_are_removed_by_the_rerun(bigger, tmp_path):
    returncode, _ = interrupt_edit(bigger, tmp_path, signal.SIGKILL)
    assert returncode == -signal.SIGKILL and list(tmp_path.glob(".out.tmp-*"))
    rerun = steerfold("edit", bigger, "--direction", tmp_path / "d.safetensors", "--out", tmp_path / "out")
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert not hidden_leftovers(tmp_path) and (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.adversarial
def test_sigint_exits_130_in_20_of_20_tries(bigger, tmp_path):
    codes = []
    for attempt in range(20):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        returncode, stderr = interrupt_edit(bigger, folder, signal.SIGINT, delay=attempt * 0.08)  # from torch's import to the folding
        codes.append(returncode)
        assert not hidden_leftovers(folder) and not (folder / "out").exists(), stderr
    assert codes == [130] * 20


def test_outputs_get_the_permissions_of_the_umask(tiny, tmp_path):
    previous = os.umask(0o022)
    try:
        merged = edited_copy(tiny, tmp_path)
        adapter = tmp_path / "adapter"
        assert invoke("edit", tiny, "--direction", tmp_path / "d.safetensors", "--out", adapter, "--format", "lora").exit_code == 0
    finally:
        os.umask(previous)
    for out in (merged, adapter):
        assert out.stat().st_mode & 0o777 == 0o755
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.rglob("*")}
        assert set(modes.values()) == {"0o644"}, modes


# ---------------------------------------------------------------- review cases


def test_the_lock_of_an_output_is_named_from_its_resolved_path(tmp_path, monkeypatch):
    from steerfold.artifacts.outputs import lock_path

    monkeypatch.chdir(tmp_path)
    here = OutputTarget(Path("."), "folder", overwrite=False, flag="--out", recognise=None)
    assert lock_path(here.out) == tmp_path.parent / f".{tmp_path.name}.lock"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    via_link = OutputTarget(tmp_path / "link", "workdir", overwrite=True, flag="--out", recognise=None)
    direct = OutputTarget(tmp_path / "real", "workdir", overwrite=True, flag="--out", recognise=None)
    assert lock_path(via_link.out, "workdir") == lock_path(direct.out, "workdir") == tmp_path / "real" / ".steerfold.lock"


def test_a_failed_swap_puts_the_old_output_back(tiny, tmp_path, monkeypatch):
    out = edited_copy(tiny, tmp_path)
    before = folder_digest(out)
    real_rename = Path.rename

    def failing(self, target):
        if self.name.startswith(".edited.tmp-"):
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    error_line(invoke("edit", tiny, "--direction", tmp_path / "d.safetensors", "--out", out, "--overwrite", "--scale", "0.5"),
               2, "cannot write", "Input/output error")
    assert folder_digest(out) == before and not hidden_leftovers(tmp_path)


def test_fit_overwrite_keeps_a_users_notes_beside_the_direction_file(organism, tmp_path):
    from steerfold.directions.file import DirectionFile, save_direction_file

    direction = tmp_path / "refusal.safetensors"
    save_direction_file(direction, DirectionFile(direction=torch.ones(8)))
    notes = tmp_path / "refusal.md"
    notes.write_text("my notes")
    error_line(invoke("fit", organism, "--harmful", prompts(tmp_path), "--harmless", prompts(tmp_path, "harmless"),
                      "--out", direction, "--overwrite"), 2, "not written by steerfold fit")
    assert notes.read_text() == "my notes"


def test_verify_reports_a_nul_byte_entry_and_skips_hidden_folders(tiny, tmp_path):
    edited = edited_copy(tiny, tmp_path)
    hidden = edited / ".cache" / "huggingface" / "download"
    hidden.mkdir(parents=True)
    (hidden / "model.safetensors.metadata").write_text("written by a download tool")
    assert invoke("verify", edited).exit_code == 0
    sums = edited / "SHA256SUMS"
    sums.write_text(sums.read_text() + f"{'0' * 64}  bad\x00name\n")
    error_line(invoke("verify", edited), 1, "not a usable path")


def test_an_empty_tensor_sharing_an_offset_is_not_an_overlap(tmp_path):
    from steerfold.artifacts.safetensors_io import read_header

    path = tmp_path / "t.safetensors"
    save_file({"a": torch.ones(4), "empty": torch.ones(0)}, str(path))
    rewrite_header(path, lambda h: h["empty"].update(data_offsets=[0, 0]) if h["a"]["data_offsets"][0] == 0 else
                   h["empty"].update(data_offsets=[h["a"]["data_offsets"][0]] * 2))
    assert {entry.name for entry in read_header(path)[0]} == {"a", "empty"}


def test_starting_a_run_over_keeps_its_own_lock(organism, tmp_path, monkeypatch):
    import steerfold.directions.fit

    out = tmp_path / "run"

    def stops(*_args, **_kwargs):
        assert (out / ".steerfold.lock").is_file()  # still held after --overwrite emptied the folder
        raise steerfold.directions.fit.SteerfoldError("stopped at the fit")

    monkeypatch.setattr(steerfold.directions.fit, "run_fit", stops)
    recipe = recipe_for(organism, tmp_path)
    error_line(invoke("run", recipe, "--out", out), 2, "stopped at the fit")
    error_line(invoke("run", recipe, "--out", out, "--overwrite"), 2, "stopped at the fit")
    assert not (out / ".steerfold.lock").exists() and not hidden_leftovers(out)


def test_library_errors_are_typed_under_one_base_class(tiny, tmp_path):
    from steerfold.models.arch import architecture_for
    from steerfold.artifacts.export import run_edit
    from steerfold.edit.spec import EditSpec
    from steerfold.errors import CannotCarry, OutputRefused, SteerfoldError, UnsupportedModel
    from steerfold.artifacts.outputs import open_output

    with pytest.raises(UnsupportedModel):
        architecture_for("mamba")
    with pytest.raises(OutputRefused):
        with open_output(tiny, inputs=[tiny]):
            pass
    direction = write_direction(tmp_path / "d.safetensors")
    with pytest.raises(CannotCarry):
        run_edit(EditSpec(model=str(tiny), direction=direction, out=tmp_path / "cv", format="cvec"))
    assert all(issubclass(kind, SteerfoldError) for kind in (UnsupportedModel, CannotCarry, OutputRefused))
    assert not (tmp_path / "cv").exists() and not hidden_leftovers(tmp_path)

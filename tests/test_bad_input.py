"""Every bad input gets one line naming the problem and the fix, exit code 2, no traceback, no output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from cli import cli
from conftest import build_tiny_model, folder_digest, save_tiny_model, write_direction


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return save_tiny_model(build_tiny_model("llama"), root / "base")


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def edit(*args):
    return CliRunner().invoke(cli, ["edit", *map(str, args)])


def make_file(path, tensors, metadata=None):
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


CASES = {
    "wrong size": (lambda d: make_file(d / "x.safetensors", {"direction": torch.ones(48)}), ("48", "hidden size is 64")),
    "nan": (lambda d: make_file(d / "x.safetensors", {"direction": torch.full((64,), float("nan"))}), ("NaN",)),
    "zero": (lambda d: make_file(d / "x.safetensors", {"direction": torch.zeros(64)}), ("zeros",)),
    "missing key": (lambda d: make_file(d / "x.safetensors", {"vector": torch.ones(64)}), ("'direction'", "vector")),
    "garbage file": (lambda d: write_bytes(d / "x.safetensors", b"not a tensor file at all"), ("not a readable",)),
    "missing file": (lambda d: d / "absent.safetensors", ("does not exist",)),
    "rows mismatch": (lambda d: make_file(d / "x.safetensors", {"directions": torch.ones(7, 64)}), ("rows",)),
    "no layer chosen": (lambda d: make_file(d / "x.safetensors", {"directions": torch.ones(4, 64)}), ("--layer",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_direction(case, base, tmp_path):
    make, fragments = CASES[case]
    before = folder_digest(base)
    assert_one_line_error(edit(base, "--direction", make(tmp_path), "--out", tmp_path / "out"), *fragments)
    assert not (tmp_path / "out").exists()
    assert folder_digest(base) == before


def test_missing_model_folder(tmp_path):
    assert_one_line_error(edit(tmp_path / "nope", "--direction", write_direction(tmp_path / "d.safetensors"),
                               "--out", tmp_path / "out"), "does not exist")


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(edit(tmp_path / "empty", "--direction", write_direction(tmp_path / "d.safetensors"),
                               "--out", tmp_path / "out"), "config.json")


def test_pickle_only_checkpoint_refused_unless_allowed(tmp_path):
    model = build_tiny_model("llama")
    folder = tmp_path / "pickled"
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    direction = write_direction(tmp_path / "d.safetensors")
    assert_one_line_error(edit(folder, "--direction", direction, "--out", tmp_path / "out"), "--allow-pickle")
    assert not (tmp_path / "out").exists()

    allowed = edit(folder, "--direction", direction, "--out", tmp_path / "out", "--allow-pickle")
    assert allowed.exit_code == 0, allowed.output
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_unsupported_architecture_lists_supported(tmp_path):
    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "mamba"
    (folder / "config.json").write_text(json.dumps(config))
    assert_one_line_error(edit(folder, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "out"),
                          "mamba", "llama", "qwen2")


def test_existing_output_needs_overwrite(base, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    direction = write_direction(tmp_path / "d.safetensors")
    assert_one_line_error(edit(base, "--direction", direction, "--out", tmp_path / "out"), "--overwrite")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    # --overwrite replaces only what steerfold wrote: the user's own folder is refused and kept
    assert_one_line_error(edit(base, "--direction", direction, "--out", tmp_path / "out", "--overwrite"), "not written by steerfold")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert edit(base, "--direction", direction, "--out", tmp_path / "mine").exit_code == 0
    (tmp_path / "mine" / "keep.txt").write_text("added")
    assert edit(base, "--direction", direction, "--out", tmp_path / "mine", "--overwrite").exit_code == 0
    assert not (tmp_path / "mine" / "keep.txt").exists() and (tmp_path / "mine" / "model.safetensors").is_file()


def test_output_is_the_input(base, tmp_path):
    before = folder_digest(base)
    direction = write_direction(tmp_path / "d.safetensors")
    assert_one_line_error(edit(base, "--direction", direction, "--out", base, "--overwrite"), "is the input")
    assert_one_line_error(edit(base, "--direction", direction, "--out", base / "sub"), "inside the input")
    assert folder_digest(base) == before


@pytest.mark.parametrize("spec", ["1-9", "x", "3-1", "-2"])
def test_bad_layer_ranges(spec, base, tmp_path):
    assert_one_line_error(edit(base, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "o",
                               "--layers", spec), "--layers")


def test_layer_flag_on_single_direction(base, tmp_path):
    assert_one_line_error(edit(base, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "o",
                               "--layer", "1"), "drop --layer")


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point, run as a process, exits 2 with one line on stderr."""
    process = subprocess.run(
        [sys.executable, "-c", "from steerfold.cli import main; main()", "edit", str(tmp_path / "nope"), "--direction",
         str(tmp_path / "d.safetensors"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert process.returncode == 2
    assert process.stderr.strip().startswith("error: ") and len(process.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,fragments", [
    (["--attention-kernel", "1,2,3"], ("--attention-kernel '1,2,3' is not PEAK,PEAK_WEIGHT,MIN_WEIGHT,FALLOFF",)),
    (["--mlp-kernel", "2,1,0,-1"], ("negative fall-off",)),
    (["--mlp-kernel", "2,inf,0,1"], ("finite",)),
    (["--steer", "1", "--condition", "COND"], ("--steer", "--condition")),
    (["--steer", "1", "--norm-preserving"], ("--norm-preserving applies to ablations only",)),
    (["--steer", "1", "--scale", "0.5"], ("--scale is the ablation strength",)),
    (["--steer", "1", "--mlp-kernel", "2,1,0,1"], ("kernels weight the writers",)),
    (["--steer", "nan"], ("finite",)),
    (["--alpha", "2"], ("--alpha is the strength of a conditional map",)),
    (["--condition", "MISSING"], ("does not exist",)),
    (["--condition", "SMALL"], ("48", "hidden size is 64")),
    (["--layers", "1", "--mlp-kernel", "3,1,0,0", "--attention-kernel", "3,1,0,0"], ("changes no residual writer",)),
])
def test_bad_edit_flags(flags, fragments, base, tmp_path):
    files = {"COND": write_direction(tmp_path / "c.safetensors"), "MISSING": tmp_path / "absent.safetensors",
             "SMALL": make_file(tmp_path / "small.safetensors", {"direction": torch.ones(48)})}
    flags = [str(files.get(flag, flag)) for flag in flags]
    before = folder_digest(base)
    assert_one_line_error(edit(base, "--direction", write_direction(tmp_path / "d.safetensors"), "--out", tmp_path / "out",
                               *flags), *fragments)
    assert not (tmp_path / "out").exists()
    assert folder_digest(base) == before

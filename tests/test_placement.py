"""Where a model runs (editor/models/placement.py): one specification shared by fit, validate and run, with
accelerate's big-model dispatch as the engine. These run on CPU machines: blocks offloaded to disk must give the same
numbers as the model in memory, and what cannot run here is one clear line."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from steerfold.models.loading import input_device, load_model
from steerfold.models.placement import Placement, memory_map, parse_placement
from steerfold.research.organism import SHIPPED_CHECKPOINT

DATA = SHIPPED_CHECKPOINT.parent / "data"


def test_a_model_larger_than_its_memory_cap_runs_offloaded_with_the_same_logits(tmp_path):
    size = (SHIPPED_CHECKPOINT / "model.safetensors").stat().st_size
    cap = size // 5  # the float32 weights exceed the cap five times
    capped = load_model(SHIPPED_CHECKPOINT, placement=parse_placement(
        {"device_map": "auto", "max_memory": f"cpu={cap // 1000}KB", "offload_folder": tmp_path / "off"}))
    assert "disk" in set(capped.hf_device_map.values()) and any(p.device.type == "meta" for p in capped.parameters())
    assert input_device(capped).type == "cpu"
    whole = load_model(SHIPPED_CHECKPOINT)
    ids = torch.tensor([[1, 7, 42, 99, 5, 17]])
    with torch.no_grad():
        assert torch.equal(capped(ids).logits, whole(ids).logits)
    assert capped.steerfold_placement == {"device": "cpu", "dtype": "float32", "device_map": "auto",
                                          "max_memory": f"cpu={cap // 1000}KB"}


def test_defaults_on_a_cpu_machine_and_the_checkpoints_own_dtype_on_an_accelerator():
    placement = Placement()
    if not torch.cuda.is_available():
        assert placement.resolved_device() == "cpu"
    assert placement.resolved_dtype("cpu", "bfloat16") == "float32"
    assert placement.resolved_dtype("cuda", "bfloat16") == "bfloat16"
    assert placement.resolved_dtype("cuda", None) == "float32"
    assert Placement(dtype="float16").resolved_dtype("cpu", "bfloat16") == "float16"
    assert memory_map("0=70GiB,1=70GiB,cpu=100GiB") == {0: "70GiB", 1: "70GiB", "cpu": "100GiB"}


@pytest.mark.parametrize("flags,message", [
    (["--device", "gpu"], "--device 'gpu' is not a device"),
    (["--max-memory", "cpu:1GB"], "is not DEVICE=SIZE"),
    (["--load-in", "4bit"], "--load-in 4bit"),
] + ([(["--device", "cuda"], "no CUDA GPU is visible")] if not torch.cuda.is_available() else []))
def test_what_cannot_run_here_is_one_line_before_anything_is_written(tmp_path, flags, message):
    result = CliRunner().invoke(cli, ["fit", str(SHIPPED_CHECKPOINT), "--harmful", str(DATA / "harmful_train.jsonl"),
                                      "--harmless", str(DATA / "harmless_train.jsonl"), "--out", str(tmp_path / "d.safetensors"),
                                      *flags])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: "), result.output
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_places_its_model_and_the_command_line_overrides_it(tmp_path):
    from steerfold.pipeline.recipe import load_recipe, placement_of

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: organism, dtype: bfloat16, device: cpu}\nprompts:\n  harmful: {organism: harmful/train}\n"
                      "  harmless: {organism: harmless/train}\n")
    assert placement_of(load_recipe(recipe).model) == Placement(device="cpu", dtype="bfloat16")
    assert placement_of(load_recipe(recipe, placement={"dtype": "float32"}).model).dtype == "float32"
    recipe.write_text("model: {path: organism, dtype: int4}\nprompts:\n  harmful: {organism: harmful/train}\n")
    result = CliRunner().invoke(cli, ["run", str(recipe), "--dry-run"])
    assert result.exit_code == 2 and "model.dtype" in result.output, result.output

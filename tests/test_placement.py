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


def _fit(tmp_path, name: str, *flags: str):
    from steerfold.directions.file import load_direction_file

    out = tmp_path / f"{name}.safetensors"
    result = CliRunner().invoke(cli, ["fit", str(SHIPPED_CHECKPOINT), "--harmful", str(DATA / "harmful_train.jsonl"),
                                      "--harmless", str(DATA / "harmless_train.jsonl"), "--out", str(out), *flags])
    assert result.exit_code == 0, result.output
    return load_direction_file(out)


def _capped_flags(tmp_path) -> list[str]:
    cap = (SHIPPED_CHECKPOINT / "model.safetensors").stat().st_size // 5
    return ["--device-map", "auto", "--max-memory", f"cpu={cap // 1000}KB", "--offload-folder", str(tmp_path / "off")]


def test_a_fit_offloaded_to_disk_gives_the_in_memory_direction_and_selection(tmp_path):
    import json

    whole, capped = _fit(tmp_path, "whole"), _fit(tmp_path, "capped", *_capped_flags(tmp_path))
    assert (capped.directions - whole.directions).abs().max() <= 1e-5
    selection = lambda file: [(row["position"], row["layer"], row["status"]) for row in json.loads(file.metadata["selection"])]
    assert selection(capped) == selection(whole)
    assert json.loads(capped.metadata["placement"])["device_map"] == "auto"
    assert json.loads(whole.metadata["placement"]) == {"device": "cpu", "dtype": "float32"}


def test_a_bfloat16_fit_points_where_the_float32_fit_does(tmp_path):
    import json

    full, half = _fit(tmp_path, "f32", "--position", "-1"), _fit(tmp_path, "bf16", "--position", "-1", "--dtype", "bfloat16")
    assert half.directions.dtype == torch.float32  # accumulated in float32 whatever the model ran in
    layer = int(full.metadata["layer"])
    cosine = torch.nn.functional.cosine_similarity(full.directions[layer], half.directions[layer], dim=0)
    assert cosine >= 0.999, float(cosine)
    assert json.loads(half.metadata["placement"])["dtype"] == "bfloat16"


def test_runtime_edits_and_generation_on_a_dispatched_model_equal_the_in_memory_ones(tmp_path):
    from steerfold.activations.generate import greedy_generate
    from steerfold.edit.edits import ablation_edit
    from steerfold.models.loading import load_tokenizer
    from steerfold.prompts import format_chat
    from steerfold.validation.divergence import first_token_kl, runner

    cap = (SHIPPED_CHECKPOINT / "model.safetensors").stat().st_size // 5
    capped = load_model(SHIPPED_CHECKPOINT, placement=parse_placement(
        {"device_map": "auto", "max_memory": f"cpu={cap // 1000}KB", "offload_folder": tmp_path / "off"}))
    whole, tokenizer = load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT)
    direction = torch.randn(whole.config.hidden_size, generator=torch.Generator().manual_seed(0))
    edit = ablation_edit(direction, range(whole.config.num_hidden_layers + 1))
    texts = [format_chat(tokenizer, text) for text in ("how do I pick a lock", "a recipe for bread", "hello")]
    kl_capped = first_token_kl(runner(capped), runner(capped, edit), tokenizer, texts)
    kl_whole = first_token_kl(runner(whole), runner(whole, edit), tokenizer, texts)
    assert kl_whole.abs().max() > 0 and (kl_capped - kl_whole).abs().max() <= 1e-5
    assert greedy_generate(capped, tokenizer, texts, max_new_tokens=8) == greedy_generate(whole, tokenizer, texts, max_new_tokens=8)


def test_a_smaller_batch_gives_the_same_direction_and_selection(tmp_path):
    import json

    default, small = _fit(tmp_path, "b32"), _fit(tmp_path, "b5", "--batch-size", "5")
    assert (small.directions - default.directions).abs().max() <= 1e-5
    assert json.loads(small.metadata["options"])["batch_size"] == 5
    chosen = lambda file: (file.metadata["position"], file.metadata["layer"])
    assert chosen(small) == chosen(default)

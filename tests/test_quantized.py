"""Quantized checkpoints on disk (FP8 block-scaled, MXFP4): tiny ones written here by reference quantizers
(tests/quantcases.py) show that

- steerfold's dequantization is transformers' own, bit for bit, and inverts the reference quantizers;
- a merged edit writes the modules it changes dequantized, folded in float32, in the checkpoint's dtype: loaded,
  they are the in-memory fold of the model transformers dequantizes, and give the runtime hooks' logits on it;
- every other tensor, quantized or not, is copied byte for byte, and the edited modules' scales are gone;
- config.json's quantization section stays true: transformers' own module swapping, run on the output's config,
  quantizes exactly the modules stored quantized;
- the size change is said before writing; fit and validation load such checkpoints dequantized;
- any other quantization format is one error line naming it, exit code 2, and no output.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from archcases import build_case
from conftest import random_direction, random_tokens, run_cli, write_direction
from quantcases import fp8_quantize, mxfp4_quantize, quantize_fp8_folder, quantize_mxfp4_folder, with_section
from steerfold.artifacts.safetensors_io import read_header
from steerfold.edit.edits import ablation_edit, steering_edit
from steerfold.edit.fold import fold_model
from steerfold.edit.hooks import runtime_hooks
from steerfold.edit.norm_preserving import norm_preserving_edit
from steerfold.errors import UnsupportedQuantization
from steerfold.models.arch import layout_of_model
from steerfold.models.dequantize import dequantize_fp8, dequantize_mxfp4
from steerfold.models.loading import load_model
from steerfold.models.placement import Placement

TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape, block", [((64, 96), (32, 32)), ((3, 64, 96), (32, 32)), ((64, 96), (128, 128))])
def test_fp8_dequantization_is_transformers_own(shape, block):
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    stored, scale_inv = fp8_quantize(weight, block)
    ours = dequantize_fp8(stored, scale_inv, block)
    assert torch.equal(ours, Fp8Dequantize(None)._dequantize_one(stored, scale_inv, torch.float32))
    assert (ours - weight).norm() <= 0.05 * weight.norm()  # e4m3 keeps 3 mantissa bits


def test_fp8_partial_edge_blocks_and_e8m0_scales():
    """Block (i, j) covers rows i·bm… and columns j·bn…, also where the last block is partial (576 = 4.5 × 128,
    which transformers' loader cannot split); E8M0 bytes are powers of two, 2^(byte − 127)."""
    weight = torch.randn(576, 200, generator=torch.Generator().manual_seed(1))
    stored, scale_inv = fp8_quantize(weight, (128, 128))
    expected = stored.to(torch.float32).clone()
    for i in range(5):
        for j in range(2):
            expected[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] *= scale_inv[i, j]
    assert torch.equal(dequantize_fp8(stored, scale_inv, (128, 128)), expected)
    exponents = torch.randint(120, 130, (5, 2), dtype=torch.uint8)
    as_floats = torch.exp2(exponents.to(torch.float32) - 127)
    assert torch.equal(dequantize_fp8(stored, exponents, (128, 128)), dequantize_fp8(stored, as_floats, (128, 128)))


def test_mxfp4_dequantization_is_transformers_own():
    """Low nibble first, E8M0 bias 127, and gpt-oss's layout: stored by rows of the last dimension in memory."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    weight = torch.randn(4, 96, 64, generator=torch.Generator().manual_seed(2))  # [E, inter, hidden] like down_proj
    blocks, scales = mxfp4_quantize(weight)
    assert blocks.shape == (4, 64, 3, 16) and scales.shape == (4, 64, 3)
    ours = dequantize_mxfp4(blocks, scales)
    assert torch.equal(ours, convert_moe_packed_tensors(blocks, scales, dtype=torch.float32))
    assert ours.shape == weight.shape and (ours - weight).norm() <= 0.15 * weight.norm()  # 4 bits a value
    byte = torch.tensor([[[[0x2F] * 16]]], dtype=torch.uint8)  # low nibble 0xF = −6, high nibble 0x2 = 1
    values = dequantize_mxfp4(byte, torch.tensor([[[128]]], dtype=torch.uint8))
    assert values[0, :2, 0].tolist() == [-12.0, 2.0]


def stored_bytes(folder) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every stored tensor of a folder: its dtype, shape and raw bytes."""
    return {entry.name: (entry.dtype, entry.shape, bytes(entry.mapped()))
            for path in sorted(folder.glob("*.safetensors")) for entry in read_header(path)[0]}


def quantized_folder(model_type: str, tmp_path, dtype: torch.dtype = torch.float32, static: bool = False):
    """A tiny random model of ``model_type`` saved in ``dtype`` and rewritten as its quantized release."""
    folder = tmp_path / "base"
    build_case(model_type).to(dtype).save_pretrained(folder)
    return quantize_mxfp4_folder(folder) if model_type == "gpt_oss" else quantize_fp8_folder(folder, static=static)


def load(folder) -> torch.nn.Module:
    """What fit and validation load on a CPU: every quantized weight dequantized by transformers, in float32."""
    return load_model(folder, placement=Placement(device="cpu"))


CASES = [("llama", torch.float32, False), ("deepseek_v3", torch.float32, False), ("gpt_oss", torch.float32, False),
         ("qwen3_moe", torch.bfloat16, False), ("gpt_oss", torch.bfloat16, False), ("llama", torch.bfloat16, True)]


@pytest.mark.parametrize("model_type, dtype, static", CASES,
                         ids=[f"{m}-{str(d)[6:]}{'-static' if s else ''}" for m, d, s in CASES])
def test_a_merged_edit_writes_the_edited_modules_dequantized(model_type, dtype, static, tmp_path):
    folder = quantized_folder(model_type, tmp_path, dtype, static)
    direction = random_direction()
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors", direction),
                     "--out", tmp_path / "m", "--layers", "2-3")
    assert result.exit_code == 0, result.output
    written = str(dtype).removeprefix("torch.")
    said = next(line for line in result.output.splitlines() if "modules the edit changes are written" in line)
    assert f"dequantized in {written}" in said and " → " in said and "%)" in said
    assert f"stored dequantized in {written}" in (tmp_path / "m" / "README.md").read_text()

    base, merged = load(folder), load(tmp_path / "m")
    edit = ablation_edit(direction, [2, 3])
    ids = random_tokens()
    with runtime_hooks(base, edit):
        reference = base(ids).logits.detach()
    if dtype == torch.float32:  # a bfloat16 output rounds the folded weights, and only them
        assert (merged(ids).logits - reference).abs().max() <= TOLERANCE
    assert (reference - base(ids).logits).abs().max() > 100 * TOLERANCE
    listed = json.loads((tmp_path / "m" / "config.json").read_text())["quantization_config"]["modules_to_not_convert"]
    modules = [module for module in listed if ".layers." in module and "*" not in module]  # the ones added
    check_parameters(merged, fold_model_copy(base, edit), dtype)
    check_stored(folder, tmp_path / "m", modules, dtype)
    check_section_is_true(tmp_path / "m")


def fold_model_copy(model: torch.nn.Module, edit) -> dict[str, torch.Tensor]:
    fold_model(model, edit)
    return {name: param.detach() for name, param in model.named_parameters()}


def check_parameters(merged, folded: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Loaded, the output is the in-memory fold of the model transformers dequantizes, parameter for parameter:
    folded in float32, then written in the checkpoint's dtype (weights still quantized are loaded as they were)."""
    for name, param in merged.named_parameters():
        expected = folded[name]
        assert torch.equal(param, expected) or torch.equal(param, expected.to(dtype).to(torch.float32)), name


def check_stored(folder, merged_folder, modules: list[str], dtype: torch.dtype) -> None:
    """Only the edit's writers and the dequantized modules change: every other tensor is stored byte for byte, and
    a dequantized module's weights are written in ``dtype``, without their scales."""
    from steerfold.models.checkpoint import check_checkpoint, open_model_folder

    layout = check_checkpoint(open_model_folder(folder))
    before, after = stored_bytes(folder), stored_bytes(merged_folder)
    written = {torch.float32: "F32", torch.bfloat16: "BF16"}[dtype]
    dequantized = {name for name in after if any(name.startswith(module + ".") for module in modules)}
    for name, (stored_dtype, shape, data) in before.items():
        if name not in after:  # a scale, or MXFP4 blocks: its weight is written dequantized
            weight = name.replace("weight_scale_inv", "weight").replace("activation_scale", "weight")
            assert weight.removesuffix("_blocks").removesuffix("_scales") in dequantized, name
        elif after[name] != (stored_dtype, shape, data):
            assert name in dequantized or layout.writer_of_key(name), name
            assert after[name][0] == (written if stored_dtype.startswith("F8") else stored_dtype), name
    assert {after[name][0] for name in dequantized if name.endswith(("proj", "proj.weight"))} == {written}
    assert any(".layers.1." in name for name in dequantized)
    assert not any(".layers.0." in name or ".layers.3." in name for name in dequantized)
    assert any(d.startswith("F8") or d == "U8" for d, _, _ in after.values())  # blocks 0 and 3 stay quantized


def check_section_is_true(folder) -> None:
    """transformers' own choice of modules to quantize, from the output's config, is what is stored quantized: the
    FP8 quantizer swaps the modules itself; MXFP4's swap (which needs GPU kernels) is its should_convert_module
    test on each gpt-oss MLP's experts."""
    from transformers.integrations.finegrained_fp8 import FP8Experts, FP8Linear
    from transformers.quantizers.auto import AutoHfQuantizer, AutoQuantizationConfig
    from transformers.quantizers.quantizers_utils import should_convert_module

    config = AutoConfig.from_pretrained(folder)
    section = json.loads((folder / "config.json").read_text())["quantization_config"]
    quantizer = AutoHfQuantizer.from_config(AutoQuantizationConfig.from_dict(section), pre_quantized=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    stored = {name: dtype for name, (dtype, _, _) in stored_bytes(folder).items()}
    if section["quant_method"] == "mxfp4":
        skip = quantizer.get_modules_to_not_convert(model, section["modules_to_not_convert"], model._keep_in_fp32_modules)
        swapped = {f"{name}.experts": should_convert_module(f"{name}.experts", skip)
                   for name, module in model.named_modules() if type(module).__name__ == "GptOssMLP"}
    else:
        quantizer._process_model_before_weight_loading(model)
        swapped = {name: isinstance(module, (FP8Linear, FP8Experts)) for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) or name.endswith(".experts")}
    for module, quantized in swapped.items():
        kinds = {dtype in ("F8_E4M3", "U8") for name, dtype in stored.items()
                 if name.startswith(module + ".") and not name.endswith(("scale_inv", "_scales", "scale", "bias"))}
        assert kinds in (set(), {quantized}), (module, quantized, kinds)
    assert any(swapped.values()) and not all(swapped.values())


def test_a_norm_preserving_fold_of_dequantized_writers_is_the_in_memory_one(tmp_path):
    folder = quantized_folder("qwen3_moe", tmp_path)
    direction = random_direction()
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors", direction),
                     "--out", tmp_path / "m", "--layers", "3", "--norm-preserving")
    assert result.exit_code == 0, result.output
    assert "FP8 (32×32 blocks) checkpoint: the 2 modules the edit changes" in result.output
    check_parameters(load(tmp_path / "m"), fold_model_copy(load(folder), norm_preserving_edit(ablation_edit(direction, [3]))),
                     torch.float32)


def test_a_steering_offset_leaves_quantized_experts_as_they_are(tmp_path):
    """On gpt-oss a steering offset goes into the biases (stored unquantized): nothing is dequantized."""
    folder = quantized_folder("gpt_oss", tmp_path)
    vector = 2.0 * random_direction(seed=5)
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "v.safetensors", vector),
                     "--out", tmp_path / "m", "--steer", "1.5", "--layers", "2-3")
    assert result.exit_code == 0, result.output
    assert "dequantized" not in result.output
    before, after = stored_bytes(folder), stored_bytes(tmp_path / "m")
    assert set(before) == set(after)
    assert all(after[name] == before[name] for name in before if not name.endswith("bias"))
    base = load(folder)
    ids = random_tokens()
    with runtime_hooks(base, steering_edit(vector, [2, 3], 1.5)):
        reference = base(ids).logits
    assert (load(tmp_path / "m")(ids).logits - reference).abs().max() <= TOLERANCE


@pytest.mark.parametrize("model_type", ["llama", "gpt_oss"])
def test_fit_and_validation_load_a_quantized_checkpoint_dequantized(model_type, tmp_path):
    """transformers' dequantized weights, and the rest cast to the dtype asked for (transformers leaves a bfloat16
    checkpoint's unquantized tensors in bfloat16 beside float32 dequantized ones)."""
    folder = quantized_folder(model_type, tmp_path, torch.bfloat16)
    model = load_model(folder, placement=Placement(device="cpu"))
    assert model.steerfold_placement["dequantized"] == {"llama": "fp8", "gpt_oss": "mxfp4"}[model_type]
    assert all(param.dtype == torch.float32 for param in model.parameters())
    layout_of_model(model)  # plain modules: hooks and folds apply
    model(random_tokens())
    reference = dict(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).named_parameters())
    assert all(torch.equal(param, reference[name].float()) for name, param in model.named_parameters())
    with pytest.raises(Exception, match="already quantized checkpoint"):
        load_model(folder, placement=Placement(device="cpu", load_in="4bit"))


def test_a_lora_over_an_fp8_base_is_refused(tmp_path):
    folder = quantized_folder("llama", tmp_path)
    result = run_cli("edit", folder, "--direction", write_direction(tmp_path / "d.safetensors"),
                     "--out", tmp_path / "lora", "--format", "lora")
    assert result.exit_code == 2 and "stored quantized (fp8)" in result.output and "--format merged" in result.output
    assert not (tmp_path / "lora").exists()


REFUSED = [({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "bitsandbytes 4-bit"),
           ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "GPTQ"),
           ({"quant_method": "awq", "bits": 4, "version": "gemm"}, "AWQ"),
           ({"quant_method": "compressed-tensors", "format": "pack-quantized"}, "compressed-tensors"),
           ({"quant_method": "fp8", "weight_block_size": [128, 128], "expert_dtype": "fp4"}, "FP4-packed experts")]


@pytest.mark.parametrize("section, named", REFUSED, ids=[s["quant_method"] + str(i) for i, (s, _) in enumerate(REFUSED)])
def test_another_quantization_is_one_line_and_no_output(section, named, tmp_path):
    folder = tmp_path / "base"
    build_case("llama").save_pretrained(folder)
    with_section(folder, section)
    direction = write_direction(tmp_path / "d.safetensors")
    for args in (["edit", folder, "--direction", direction, "--out", tmp_path / "m"],
                 ["edit", folder, "--direction", direction, "--out", tmp_path / "m", "--format", "lora"],
                 ["inspect", folder]):
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and result.output.startswith("error: ") and named in result.output
        assert "cannot edit yet" in result.output and "unquantized release" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "d.safetensors"]
    with pytest.raises(UnsupportedQuantization, match=named):
        load_model(folder, placement=Placement(device="cpu"))


def test_inspect_names_the_stored_format(tmp_path):
    result = run_cli("inspect", quantized_folder("gpt_oss", tmp_path))
    assert result.exit_code == 0, result.output
    assert "stored as         MXFP4: a merged edit writes the modules it changes dequantized" in result.output

"""The conformance harness: every model type in the architecture table, on a tiny random model built from its
transformers config class (tests/archcases.py), must satisfy what docs/design.md promises:

- the streamed merged export and the in-memory fold give the logits of the runtime hooks;
- every tensor that is not a residual writer (vision tower, projector, norms, ...) is copied byte for byte;
- the LoRA adapter gives the merged checkpoint's logits, or is refused for the stated reason;
- after a full ablation no residual state has a component along the direction.

A table row without a harness case fails, and so does a row with a writer pattern deleted.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from archcases import CASES, build_case
from conftest import random_direction, random_tokens, run_cli, write_direction
from steerfold.activations.capture import recording
from steerfold.edit.edits import ablation_edit
from steerfold.edit.fold import fold_model
from steerfold.edit.hooks import runtime_hooks
from steerfold.errors import BadInput, UnsupportedModel
from steerfold.models.arch import ARCHITECTURES, REFUSED, architecture_for, layout_of_model, resolve_layout
from steerfold.models.coverage import coverage

TOLERANCE = 1e-4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread: several threads spin against each other (and other jobs) on every
    64-wide matrix product."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def residual_states(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    layers = range(layout_of_model(model).num_layers + 1)
    with torch.no_grad(), recording(model, layers) as seen:
        model(ids)
    return [seen[layer].to(torch.float32) for layer in layers]


def check_fold_equals_hooks(model: torch.nn.Module, direction: torch.Tensor) -> None:
    """Fold a full ablation into ``model`` in place; its logits must be the runtime hooks' and its residual states
    orthogonal to the direction (raises AssertionError otherwise)."""
    ids = random_tokens()
    edit = ablation_edit(direction, range(layout_of_model(model).num_layers + 1))
    before = logits(model, ids)
    with runtime_hooks(model, edit):
        reference = logits(model, ids)
    fold_model(model, edit)
    assert (logits(model, ids) - reference).abs().max() <= TOLERANCE, "the fold differs from the runtime hooks"
    assert (reference - before).abs().max() > 100 * TOLERANCE, "the edit did not move the logits"
    check_orthogonal(model, ids, direction)


def check_orthogonal(model: torch.nn.Module, ids: torch.Tensor, direction: torch.Tensor) -> None:
    for layer, state in enumerate(residual_states(model, ids)):
        ratio = ((state @ direction).abs() / state.norm(dim=-1)).max()
        assert ratio <= 1e-5, f"layer index {layer} keeps a component {float(ratio):.2e} along the direction"


def tensors(folder) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            found.update({key: handle.get_tensor(key) for key in handle.keys()})
    return found


def test_every_table_row_has_a_harness_case():
    assert sorted(ARCHITECTURES) == sorted(CASES)
    assert not set(REFUSED) & set(ARCHITECTURES)


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_row_conforms(model_type, tmp_path):
    model = build_case(model_type)
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    direction = random_direction()
    direction_file = write_direction(tmp_path / "d.safetensors", direction)
    result = run_cli("edit", folder, "--direction", direction_file, "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output

    base = AutoModelForCausalLM.from_pretrained(folder).eval()  # the model a user's runtime hooks would run on
    ids = random_tokens()
    with runtime_hooks(base, ablation_edit(direction, range(layout_of_model(base).num_layers + 1))):
        reference = logits(base, ids)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (logits(merged, ids) - reference).abs().max() <= TOLERANCE
    assert (logits(merged, ids) - logits(base, ids)).abs().max() > 100 * TOLERANCE
    check_orthogonal(merged, ids, direction)
    copied = check_untouched_tensors_copied(folder, tmp_path / "merged")
    if CASES[model_type].vision is not None:  # the vision tower and projector are among the tensors copied as they are
        assert any("vision" in key or "visual" in key for key in copied)
    check_lora(model_type, folder, direction_file, logits(merged, ids), ids, tmp_path)
    check_fold_equals_hooks(model, direction)


def check_untouched_tensors_copied(folder, merged_folder) -> list[str]:
    """Every tensor that is no residual writer comes out byte for byte (returns their names); the writers change."""
    source, merged = tensors(folder), tensors(merged_folder)
    layout = resolve_layout(json.loads((folder / "config.json").read_text()), source)
    assert set(source) <= set(merged) and len(set(merged) - set(source)) <= 1  # an untied head's copy at most
    copied = [key for key in source if layout.writer_of_key(key) is None]
    for key in copied:
        assert torch.equal(merged[key], source[key]), key
    assert any(not torch.equal(merged[k], source[k]) for k in source if layout.writer_of_key(k))
    return copied


def check_lora(model_type: str, folder, direction_file, merged_logits, ids, tmp_path) -> None:
    result = run_cli("edit", folder, "--direction", direction_file, "--out", tmp_path / "lora", "--format", "lora")
    refusal = CASES[model_type].lora_refusal
    if refusal is not None:
        assert result.exit_code == 2 and refusal in result.output, result.output
        assert not (tmp_path / "lora").exists()
        return
    assert result.exit_code == 0, result.output
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "lora").eval()
    assert (logits(adapted, ids) - merged_logits).abs().max() <= TOLERANCE


def without(model_type: str, hook: str, pattern: str | None = None):
    """The row of ``model_type`` with one writer (``hook``) deleted, or only one of its tensor patterns."""
    arch = ARCHITECTURES[model_type]
    writers = []
    for spec in arch.writers:
        if spec.hook != hook:
            writers.append(spec)
        elif pattern is not None and pattern == spec.offset:
            writers.append(dataclasses.replace(spec, offset=None))
        elif pattern is not None:
            writers.append(dataclasses.replace(spec, tensors=tuple(t for t in spec.tensors if t.pattern != pattern)))
    return dataclasses.replace(arch, writers=tuple(writers))


@pytest.mark.parametrize("model_type,hook,pattern", [
    ("qwen2_moe", "mlp", "mlp.shared_expert.down_proj.weight"),  # the shared expert's write escapes the fold
    ("qwen3_next", "mlp", "mlp.shared_expert.down_proj.weight"),
    ("gpt_oss", "mlp", "mlp.experts.down_proj_bias"),  # the experts' biases keep the direction
    ("gpt_oss", "self_attn.o_proj", None),
    ("gemma2", "mlp.down_proj", None),  # a whole writer: the stream keeps its component
    ("gemma3", "mlp.down_proj", None),
    ("llama", "self_attn.o_proj", None),
    ("llama4", "feed_forward", "feed_forward.shared_expert.down_proj.weight"),
    ("gemma4_text", "experts", None),  # the experts' branch of the MoE block
    ("gemma4_text", "per_layer_projection", None),  # the per-layer input's write
    ("gemma4", "per_layer_projection", None),
    ("falcon_h1", "mamba.out_proj", None),  # the Mamba-2 mixer beside attention
    ("nemotron_h", "mixer", "mixer.shared_experts.down_proj.weight"),
])
def test_harness_detects_a_deleted_writer_pattern(model_type, hook, pattern, monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, model_type, without(model_type, hook, pattern))
    with pytest.raises(AssertionError):
        check_fold_equals_hooks(build_case(model_type), random_direction())


def test_a_write_normed_twice_passes_both_gains(monkeypatch):
    """Gemma 4's MoE block norms the dense MLP's and the experts' outputs, then their sum: a row that names only the
    outer norm leaves a component along the direction in the stream."""
    model = build_case("gemma4_text")
    outer_only = tuple(dataclasses.replace(spec, post_norms=spec.post_norms[-1:])
                       for spec in ARCHITECTURES["gemma4_text"].writers)
    row = dataclasses.replace(ARCHITECTURES["gemma4_text"], writers=outer_only)
    monkeypatch.setitem(ARCHITECTURES, "gemma4_text", row)
    with pytest.raises(AssertionError, match="keeps a component"):
        check_fold_equals_hooks(model, random_direction())


@pytest.mark.parametrize("model_type,extra", [("gemma4_text", {"enable_moe_block": False}),
                                              ("gemma4_text", {"hidden_size_per_layer_input": 0,
                                                               "num_kv_shared_layers": 0}),
                                              ("nemotron_h", {"moe_latent_size": 32})])
def test_writers_that_exist_by_configuration(model_type, extra, tmp_path):
    """One row covers a family's configurations: Gemma 4 without the MoE block or per-layer inputs, Nemotron-H's
    latent MoE (its experts write latent vectors, stored per expert on disk and left as they are, which
    fc2_latent_proj brings to the stream). The streamed export and the in-memory fold both give the hooks' logits."""
    model = build_case(model_type, **extra)
    model.save_pretrained(tmp_path / "base")
    direction = random_direction()
    result = run_cli("edit", tmp_path / "base", "--direction", write_direction(tmp_path / "d.safetensors", direction),
                     "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    ids = random_tokens()
    with runtime_hooks(model, ablation_edit(direction, range(layout_of_model(model).num_layers + 1))):
        reference = logits(model, ids)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (logits(merged, ids) - reference).abs().max() <= TOLERANCE
    check_orthogonal(merged, ids, direction)
    check_untouched_tensors_copied(tmp_path / "base", tmp_path / "merged")
    check_fold_equals_hooks(model, direction)


def test_a_bias_inside_a_writer_of_several_tensors_is_refused():
    """Nemotron-H with mlp_bias: the shared expert's bias sits inside the MoE writer, which folds its weights only."""
    with pytest.raises(BadInput, match="shared_experts.down_proj.bias"):
        layout_of_model(build_case("nemotron_h", mlp_bias=True))


@pytest.mark.parametrize("model_type", ["qwen3_next", "qwen3_5"])
def test_a_hybrid_config_without_layer_types_gets_its_class_defaults(model_type, tmp_path):
    """Released hybrid configs may give only full_attention_interval: the layer types are then the config class's."""
    build_case(model_type).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    text = config.get("text_config", config)
    del text["layer_types"]
    text["full_attention_interval"] = 2
    layout = resolve_layout(config, tensors(tmp_path))
    mixers = [w.hook.split(".")[-2] for w in layout.writers if w.role == "attention"]
    assert mixers == ["linear_attn", "self_attn", "linear_attn", "self_attn"]


def test_a_nemotron_h_config_with_its_block_pattern(tmp_path):
    """Released Nemotron-H configs give the blocks as hybrid_override_pattern (M Mamba-2, * attention, E experts,
    - MLP): the config class turns it into layer types, and each block gets its mixer's writer."""
    build_case("nemotron_h").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["layers_block_type"]
    layout = resolve_layout({**config, "hybrid_override_pattern": "M*E-"}, tensors(tmp_path))
    assert [w.hook.removeprefix("backbone.layers.") for w in layout.writers[1:]] == [
        "0.mixer.out_proj", "1.mixer.o_proj", "2.mixer", "3.mixer.down_proj"]


@pytest.mark.parametrize("model_type", ["deepseek_v3", "glm4_moe", "glm4_moe_lite"])
def test_multi_token_prediction_blocks_are_copied_unedited(model_type, tmp_path):
    """Released DeepSeek-V3 and GLM-4.5 checkpoints store their MTP layer as one block after the last: allowed when the
    config counts it, copied byte for byte, and refused as a mismatch when it does not."""
    from safetensors.torch import save_file

    folder = tmp_path / "base"
    build_case(model_type).save_pretrained(folder)
    stored = tensors(folder)
    mtp = {k.replace(".layers.3.", ".layers.4."): v.clone() for k, v in stored.items() if ".layers.3." in k}
    save_file({**stored, **mtp}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.pop("num_mtp_layers", None)
    (folder / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 1}))
    direction_file = write_direction(tmp_path / "d.safetensors")
    assert run_cli("edit", folder, "--direction", direction_file, "--out", tmp_path / "m").exit_code == 0
    merged = tensors(tmp_path / "m")
    assert all(torch.equal(merged[k], v) for k, v in mtp.items())
    assert not torch.equal(merged["model.layers.3.self_attn.o_proj.weight"], stored["model.layers.3.self_attn.o_proj.weight"])
    (folder / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 0}))
    refused = run_cli("edit", folder, "--direction", direction_file, "--out", tmp_path / "m0")
    assert refused.exit_code == 2 and "holds decoder block 4" in refused.output


def test_an_optional_writer_may_be_absent():
    """Granite 4.0-H comes with experts or without (num_local_experts = 0): both are the same row."""
    model = build_case("granitemoehybrid", num_local_experts=0)
    assert not [w for w in layout_of_model(model).writers if w.hook.endswith("block_sparse_moe")]
    check_fold_equals_hooks(model, random_direction())


def test_a_hybrid_block_without_its_token_mixer_is_refused(monkeypatch):
    """Deleting the linear-attention writer of a hybrid leaves those blocks without a writer for their layer type:
    resolving the layout refuses it before any number is computed."""
    monkeypatch.setitem(ARCHITECTURES, "qwen3_5_text", without("qwen3_5_text", "linear_attn.out_proj"))
    with pytest.raises(BadInput, match="layer type 'linear_attention'"):
        layout_of_model(build_case("qwen3_5_text"))


FALCON_BIASES = {"mlp_bias": True, "attention_bias": True, "projectors_bias": True}


@pytest.mark.parametrize("model_type,extra", [("gpt_oss", {}), ("starcoder2", {}), ("phi", {}),
                                              ("falcon_h1", FALCON_BIASES)])
def test_steering_folds_into_the_writers_that_carry_an_offset(model_type, extra, tmp_path):
    """A constant offset folds into the last writer's bias; on gpt-oss into every expert's bias, since its routing
    weights sum to one; on Falcon-H1 divided by the MLP's output multiplier: the streamed export gives the runtime
    hooks' logits."""
    from steerfold.edit.edits import steering_edit

    model = build_case(model_type, **extra)
    model.save_pretrained(tmp_path / "base")
    vector = 2.0 * random_direction(seed=5)
    result = run_cli("edit", tmp_path / "base", "--direction", write_direction(tmp_path / "v.safetensors", vector),
                     "--out", tmp_path / "m", "--steer", "1.5", "--layers", "2-3")
    assert result.exit_code == 0, result.output
    ids = random_tokens()
    with runtime_hooks(model, steering_edit(vector, [2, 3], 1.5)):
        reference = logits(model, ids)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert (logits(merged, ids) - reference).abs().max() <= TOLERANCE
    assert (reference - logits(model, ids)).abs().max() > 100 * TOLERANCE


@pytest.mark.parametrize("layer", [0, 2, 4])
def test_a_steering_hook_adds_exactly_the_vector_through_the_multipliers(layer):
    """Falcon-H1 multiplies its embedding and each writer's output by its own config value: the offset a layer's last
    writer carries is divided by that writer's multiplier, so the stream gains exactly the vector at that layer."""
    from steerfold.edit.edits import steering_edit

    model = build_case("falcon_h1")
    vector = 2.0 * random_direction(seed=5)
    ids = random_tokens()
    base = residual_states(model, ids)
    with runtime_hooks(model, steering_edit(vector, [layer])):
        steered = residual_states(model, ids)
    assert all(torch.equal(base[index], steered[index]) for index in range(layer))
    assert torch.allclose(steered[layer] - base[layer], vector.expand_as(base[layer]), atol=1e-5)


def test_every_causal_lm_type_is_supported_or_refused_with_a_reason():
    table = coverage()
    assert set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) <= set(table)
    for model_type, (status, reason) in table.items():
        assert status in ("supported", "refused"), model_type
        if status == "supported":
            assert model_type in ARCHITECTURES and architecture_for(model_type)
        else:
            assert reason and "\n" not in reason
            with pytest.raises(UnsupportedModel, match="not supported"):
                architecture_for(model_type)
    for model_type in ("llama", "qwen2_moe", "gemma2", "qwen3_next", "gpt_oss", "gemma3"):
        assert table[model_type][0] == "supported"
    assert table["mistral3"] == ("refused", REFUSED["mistral3"])
    assert table["mamba"][0] == "refused"  # no row yet: said so, in one line


def test_architectures_command_prints_the_table_from_the_same_data():
    text = run_cli("architectures")
    assert text.exit_code == 0, text.output
    lines = {line.split()[0]: line for line in text.output.splitlines() if line.startswith("  ")}
    assert set(ARCHITECTURES) | set(REFUSED) <= set(lines)
    assert "linear_attn.out_proj [linear_attention]" in lines["qwen3_next"] and "mlp (experts)" in lines["qwen3_next"]
    assert "language model only" in lines["gemma3"] and "post-norm" in lines["gemma3"]
    assert REFUSED["mistral3"] in lines["mistral3"]
    every = run_cli("architectures", "--all")
    assert set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) <= {line.split()[0] for line in every.output.splitlines() if line.startswith("  ")}
    as_json = json.loads(run_cli("architectures", "--json").output)
    assert as_json == {t: list(entry) for t, entry in coverage().items()}


def test_the_readme_names_every_supported_and_every_refused_type():
    """README's "Supported architectures" is written from the table: a row added or refused without it fails here."""
    import re
    from pathlib import Path

    from steerfold.models.coverage import coverage

    section = Path(__file__).resolve().parents[1].joinpath("README.md").read_text().split("## Supported architectures", 1)[1]
    section = section.split("\n## ", 1)[0]
    named = set(re.findall(r"[a-z][a-z0-9_]*[a-z0-9]", section.replace("(_text)", " _text")))
    for model_type, (status, reason) in coverage().items():
        if status == "supported" or not reason.startswith("no row yet"):
            base = model_type.removesuffix("_text")
            assert model_type in named or base in named, f"README's Supported architectures does not name {model_type}"

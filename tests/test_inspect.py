"""`steerfold inspect` reports the residual writers and what each artifact can carry."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cli import cli
from conftest import LAYERS, build_tiny_model, save_tiny_model


def inspect_json(folder):
    result = CliRunner().invoke(cli, ["inspect", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_inspect_lists_writers_and_portability(tmp_path):
    info = inspect_json(save_tiny_model(build_tiny_model("qwen2", tie_word_embeddings=True), tmp_path / "q"))
    assert info["model_type"] == "qwen2" and info["num_hidden_layers"] == LAYERS and info["hidden_size"] == 64
    assert info["tied_embeddings"] is True
    roles = [w["role"] for w in info["residual_writers"]]
    assert roles == ["embedding"] + ["attention", "mlp"] * LAYERS
    assert [w["layer"] for w in info["residual_writers"]] == [0] + [l for l in range(1, LAYERS + 1) for _ in range(2)]
    cells = {(a["artifact"], a["edit_kind"].split(" ")[0]): a["exact"] for a in info["artifacts"]}
    assert cells[("merged safetensors", "linear")] and not cells[("merged safetensors", "constant")]
    assert cells[("PEFT LoRA", "linear")] and not cells[("GGUF control vector", "linear")]


def test_inspect_sees_biases_and_multipliers(tmp_path):
    info = inspect_json(save_tiny_model(build_tiny_model("llama", attention_bias=True, mlp_bias=True), tmp_path / "b"))
    assert all(w["bias"] for w in info["residual_writers"][1:])
    cells = {(a["artifact"], a["edit_kind"].split(" ")[0]): a["exact"] for a in info["artifacts"]}
    assert cells[("merged safetensors", "constant")] and not cells[("PEFT LoRA", "linear")]
    granite = inspect_json(save_tiny_model(build_tiny_model("granite", residual_multiplier=0.5), tmp_path / "g"))
    assert {w["multiplier"] for w in granite["residual_writers"][1:]} == {0.5}


def test_inspect_text_output(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(save_tiny_model(build_tiny_model("phi3"), tmp_path / "p"))])
    assert result.exit_code == 0
    assert "phi3" in result.output and "model.layers.2.mlp.down_proj" in result.output


def test_inspect_reports_post_norm_and_experts(tmp_path):
    gemma = inspect_json(save_tiny_model(build_tiny_model("gemma2", head_dim=16, tie_word_embeddings=True), tmp_path / "g"))
    assert gemma["residual_writers"][1]["post_norm"].endswith("post_attention_layernorm.weight")
    notes = " ".join(a["note"] for a in gemma["artifacts"])
    assert "not identical to a runtime ablation" in notes and "PEFT ≥ 0.18" in notes
    moe = inspect_json(save_tiny_model(build_tiny_model("mixtral", num_local_experts=4, num_experts_per_tok=2), tmp_path / "m"))
    mlp = moe["residual_writers"][2]
    assert mlp["module"] == "model.layers.0.mlp" and len(mlp["tensors"]) == 4  # one down projection per expert, on disk
    cells = {(a["artifact"], a["edit_kind"].split(" ")[0]): a["exact"] for a in moe["artifacts"]}
    assert cells[("merged safetensors", "linear")] and not cells[("PEFT LoRA", "linear")]

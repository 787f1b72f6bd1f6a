"""SHA256SUMS are written with every artifact; `steerfold verify` fails on one flipped byte."""

from __future__ import annotations

from click.testing import CliRunner

from cli import cli
from conftest import build_tiny_model, save_tiny_model, write_direction


def test_verify_passes_then_fails_on_a_flipped_byte(tmp_path):
    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    direction = write_direction(tmp_path / "d.safetensors")
    runner = CliRunner()
    for fmt in ("merged", "lora"):
        out = tmp_path / fmt
        assert runner.invoke(cli, ["edit", str(folder), "--direction", str(direction), "--out", str(out), "--format", fmt,
                                   "--max-shard-size", "150KB"]).exit_code == 0
        listed = (out / "SHA256SUMS").read_text()
        assert "config.json" in listed or fmt == "lora"
        ok = runner.invoke(cli, ["verify", str(out)])
        assert ok.exit_code == 0 and ok.output.startswith("OK")

        target = sorted(out.glob("*.safetensors"))[-1]
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
        bad = runner.invoke(cli, ["verify", str(out)])
        assert bad.exit_code == 1 and f"{target.name} does not match" in bad.output


def test_verify_catches_index_and_listing_problems(tmp_path):
    import json

    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "base")
    out = tmp_path / "m"
    CliRunner().invoke(cli, ["edit", str(folder), "--direction", str(write_direction(tmp_path / "d.safetensors")), "--out", str(out),
                             "--max-shard-size", "150KB"])
    index_path = out / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = sorted(index["weight_map"])[0]
    index["weight_map"][name] = "model-00099-of-00099.safetensors"
    index_path.write_text(json.dumps(index))
    (out / "extra.txt").write_text("x")
    result = CliRunner().invoke(cli, ["verify", str(out)])
    assert result.exit_code == 1
    assert "extra.txt is not listed" in result.output and "missing" in result.output
    assert "model.safetensors.index.json does not match" in result.output

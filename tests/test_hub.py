"""Hub code paths through their one seam: an injected download function and an injected HfApi."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import errors

from cli import cli
from conftest import build_tiny_model, save_tiny_model, write_direction
from steerfold.errors import SteerfoldError
from steerfold.artifacts.checksums import write_checksums
from steerfold.hub import fetch_snapshot, push_folder, resolve_model


class FakeResponse:
    def __init__(self, status_code):
        self.status_code = status_code
        self.headers = {}
        self.request = None


def raiser(exc):
    def download(*_args, **_kwargs):
        raise exc
    return download


@pytest.mark.parametrize("exc,fragment", [
    (errors.LocalEntryNotFoundError("not cached"), "offline"),
    (errors.OfflineModeIsEnabled("offline"), "offline"),
    (ConnectionError("no route"), "cannot reach the Hub"),
])
def test_fetch_failures_are_one_line(exc, fragment):
    with pytest.raises(SteerfoldError, match=fragment):
        fetch_snapshot("owner/model", download=raiser(exc))


def test_real_download_offline_with_empty_cache(tmp_path, monkeypatch):
    """The real huggingface_hub path, forced offline with an empty cache: one clear line, no network."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SteerfoldError, match="not in the local cache"):
        fetch_snapshot("owner/model")


def test_edit_accepts_a_hub_id_through_the_seam(tmp_path, monkeypatch):
    folder = save_tiny_model(build_tiny_model("llama"), tmp_path / "snapshot")
    calls = []

    def download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        return str(folder)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    result = CliRunner().invoke(cli, ["edit", "owner/tiny-llama", "--revision", "v1", "--direction",
                                      str(write_direction(tmp_path / "d.safetensors")), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert calls == [("owner/tiny-llama", "v1")]
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.fixture
def organism_on_the_hub(monkeypatch):
    """Every snapshot download returns the shipped organism; the calls are recorded."""
    import huggingface_hub

    from steerfold.research.organism import SHIPPED_CHECKPOINT

    calls = []

    def download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        return str(SHIPPED_CHECKPOINT)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    return calls


def prompt_file(path, kind):
    import json

    from steerfold.research.organism import load_split

    path.write_text("".join(json.dumps({"prompt": r.text}) + "\n" for r in load_split(kind, "test")[:4]))
    return str(path)


def test_fit_and_validate_accept_a_hub_id_through_the_seam(tmp_path, organism_on_the_hub):
    from steerfold.directions.file import load_direction_file
    from steerfold.research.organism import PERSONAS, SHIPPED_CHECKPOINT

    out = tmp_path / "persona.safetensors"
    result = CliRunner().invoke(cli, ["fit", "owner/organism", "--revision", "v2", "--out", str(out), "--persona",
                                      PERSONAS["compliant"], "--prompts", prompt_file(tmp_path / "h.jsonl", "harmful"),
                                      "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert load_direction_file(out).metadata["model"] == "owner/organism@v2"

    result = CliRunner().invoke(cli, ["validate", str(SHIPPED_CHECKPOINT), "--base", "owner/organism", "--revision", "v2",
                                      "--harmful", prompt_file(tmp_path / "h.jsonl", "harmful"), "--harmless",
                                      prompt_file(tmp_path / "ok.jsonl", "harmless"), "--max-new-tokens", "4",
                                      "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert organism_on_the_hub == [("owner/organism", "v2")] * 2
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert (report["base"], report["base_revision"]) == ("owner/organism", "v2")


def test_local_folder_with_revision_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(SteerfoldError, match="drop --revision"):
        resolve_model(tmp_path / "m", revision="main")


class RecordingApi:
    """Stands in for HfApi and records what a push asks of the Hub."""

    def __init__(self, fail_with=None):
        self.calls, self.fail_with = [], fail_with

    def create_repo(self, repo_id, **kwargs):
        if self.fail_with:
            raise self.fail_with
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        ops = {op.path_in_repo: hashlib.sha256(open(op.path_or_fileobj, "rb").read()).hexdigest() for op in operations}
        self.calls.append(("create_commit", repo_id, {"files": ops, **kwargs}))
        return type("Info", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1", "pr_url": None})()


def test_push_makes_one_commit_with_every_file(tmp_path):
    folder = tmp_path / "artifact"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.json").write_text("{}")
    (folder / "sub" / "b.bin").write_bytes(b"\x00\x01")
    (folder / ".hidden").write_text("skip")
    write_checksums(folder)
    api = RecordingApi()
    url = push_folder(folder, "me/edited", private=True, revision="edit-1", commit_message="msg", api=api)
    assert url.endswith("/commit/1")
    (_, _, repo), (_, _, branch), (_, repo_id, commit) = api.calls
    assert repo == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert branch["branch"] == "edit-1"
    assert repo_id == "me/edited" and commit["commit_message"] == "msg" and commit["revision"] == "edit-1"
    sums = hashlib.sha256((folder / "SHA256SUMS").read_bytes()).hexdigest()
    assert commit["files"] == {"a.json": hashlib.sha256(b"{}").hexdigest(), "sub/b.bin": hashlib.sha256(b"\x00\x01").hexdigest(),
                               "SHA256SUMS": sums}


def test_push_auth_failure_is_one_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    write_checksums(tmp_path / "a")
    failure = errors.HfHubHTTPError("401 Unauthorized", response=FakeResponse(401))
    with pytest.raises(SteerfoldError, match="HF_TOKEN"):
        push_folder(tmp_path / "a", "me/x", api=RecordingApi(fail_with=failure))
    with pytest.raises(SteerfoldError, match="cannot reach"):
        push_folder(tmp_path / "a", "me/x", api=RecordingApi(fail_with=ConnectionError("down")))


def test_push_dry_run_prints_the_plan_offline(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"x" * 10)
    write_checksums(tmp_path / "a")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    result = CliRunner().invoke(cli, ["push", str(tmp_path / "a"), "me/x", "--private", "--dry-run"])
    assert result.exit_code == 0
    assert "model.safetensors" in result.output and "me/x (private), revision main" in result.output
    assert "hf_secret_value" not in result.output
    bad = CliRunner().invoke(cli, ["push", str(tmp_path / "a"), "not a repo", "--dry-run"])
    assert bad.exit_code == 2 and bad.output.startswith("error:")


def test_a_judge_may_be_a_hub_id(organism_on_the_hub):
    from steerfold.directions.methods.options import parse_fit_options
    from steerfold.directions.methods.scorers import SCORERS, Judge

    options = parse_fit_options({"method": "ridge", "scorer": "judge", "judge": "owner/judge"})
    assert isinstance(SCORERS["judge"](options), Judge)
    assert organism_on_the_hub == [("owner/judge", None)]


def test_a_missing_local_path_that_looks_like_a_hub_id_says_both(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    harmful, harmless = prompt_file(tmp_path / "h.jsonl", "harmful"), prompt_file(tmp_path / "ok.jsonl", "harmless")
    result = CliRunner().invoke(cli, ["fit", "runs/model", "--out", str(tmp_path / "d.safetensors"),
                                      "--harmful", harmful, "--harmless", harmless])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not in the local cache" in lines[0] and "no local folder of that name exists" in lines[0], result.output


def test_an_adapter_of_a_hub_model_loads_its_recorded_base_at_its_revision(tmp_path, organism_on_the_hub):
    from steerfold.models.loading import load_model

    result = CliRunner().invoke(cli, ["edit", "owner/organism", "--revision", "v2", "--format", "lora", "--direction",
                                      str(write_direction(tmp_path / "d.safetensors", torch.randn(128))), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("owner/organism", "v2")
    load_model(tmp_path / "a")
    assert organism_on_the_hub == [("owner/organism", "v2")] * 2


def test_an_adapter_base_recorded_relative_to_the_adapter_is_found_and_a_missing_one_is_one_line(tmp_path, monkeypatch):
    import os
    import shutil

    from steerfold.models.loading import load_model
    from steerfold.research.organism import SHIPPED_CHECKPOINT

    base = tmp_path / "models" / "base"
    shutil.copytree(SHIPPED_CHECKPOINT, base)
    result = CliRunner().invoke(cli, ["edit", str(base), "--format", "lora", "--direction",
                                      str(write_direction(tmp_path / "d.safetensors", torch.randn(128))), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    config_path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = os.path.relpath(base, tmp_path / "a")  # ../models/base
    config_path.write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path / "models")  # the relative path does not hold from here
    load_model(tmp_path / "a")

    config["base_model_name_or_path"] = "gone/base"
    config_path.write_text(json.dumps(config))
    with pytest.raises(SteerfoldError, match="records base model gone/base, which cannot be loaded .*: pass --base"):
        load_model(tmp_path / "a")

"""Progress: a line when a step starts and one when it is done (elapsed seconds, rate) when stderr is a file or pipe;
nothing on an in-memory stream or when silenced; nothing more when a loop is left early."""

from __future__ import annotations

import re

import pytest

from steerfold.progress import progress, step


def test_a_log_gets_a_start_and_a_done_line_with_time_and_rate(capfd, monkeypatch):
    monkeypatch.delenv("STEERFOLD_PROGRESS", raising=False)  # pytest's fd capture: stderr is a file
    assert list(progress(iter([1, 2, 3]), "capturing", total=3, unit="batch")) == [1, 2, 3]
    assert list(progress(["a"], "scoring", unit="candidate")) == ["a"]
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "steerfold: capturing: started (3 batches)"
    assert re.fullmatch(r"steerfold: capturing: done, 3 batches in \d+\.\d s \(.+\)", lines[1]), lines[1]
    assert lines[2] == "steerfold: scoring: started (1 candidate)"
    assert re.fullmatch(r"steerfold: scoring: done, 1 candidate in \d+\.\d s \(.+ (candidates/s|s per candidate)\)", lines[3])


def test_a_step_without_items_and_a_loop_left_early(capsys, monkeypatch):
    monkeypatch.setenv("STEERFOLD_PROGRESS", "lines")
    with step("loading the model"):
        pass
    with pytest.raises(RuntimeError):
        with step("failing"):
            raise RuntimeError
    for item in progress([1, 2, 3], "searching"):
        break
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "steerfold: loading the model: started"
    assert re.fullmatch(r"steerfold: loading the model: done in \d+\.\d s", lines[1])
    assert lines[2:] == ["steerfold: failing: started", "steerfold: searching: started (3 steps)"]


def test_silenced_and_quiet_on_an_in_memory_stream(capsys, monkeypatch):
    monkeypatch.setenv("STEERFOLD_PROGRESS", "off")
    assert list(progress([1, 2], "quiet")) == [1, 2]
    with step("quiet step"):
        pass
    monkeypatch.delenv("STEERFOLD_PROGRESS")  # capsys: an in-memory stderr, as click's CliRunner gives a command
    assert list(progress([1, 2], "in memory")) == [1, 2]
    assert capsys.readouterr().err == ""


def _fit_log(tmp_path, *flags: str) -> list[str]:
    import os
    import subprocess
    import sys

    from steerfold.research.organism import SHIPPED_CHECKPOINT

    data = SHIPPED_CHECKPOINT.parent / "data"
    env = {key: value for key, value in os.environ.items() if key != "STEERFOLD_PROGRESS"}
    log = tmp_path / "fit.log"
    with log.open("w") as stderr:  # a log file, as a batch job gives
        done = subprocess.run([sys.executable, "cli.py", *flags, "fit", str(SHIPPED_CHECKPOINT), "--harmful",
                               str(data / "harmful_train.jsonl"), "--harmless", str(data / "harmless_train.jsonl"),
                               "--out", str(tmp_path / f"d{len(flags)}.safetensors")], stderr=stderr, stdout=subprocess.PIPE,
                              env=env, text=True)
    assert done.returncode == 0, log.read_text()
    return log.read_text().splitlines()


def test_a_fit_logs_each_step_with_its_time_and_quiet_silences_them(tmp_path):
    lines = _fit_log(tmp_path)
    done = [line for line in lines if re.fullmatch(r"steerfold: .+: done(,| in) .*\d+\.\d s.*", line)]
    steps = {line.split(":")[1].strip().split(" (")[0] for line in done}
    assert any(step.startswith("loading the model") for step in steps), lines
    assert any(step.startswith("capturing activations") for step in steps), lines
    assert any(step.startswith("screening candidates") or step.startswith("scoring") for step in steps), lines
    assert not any("Loading weights" in line for line in lines), lines  # transformers' bar is not a log line
    assert not [line for line in _fit_log(tmp_path, "--quiet") if line.startswith("steerfold: ")]

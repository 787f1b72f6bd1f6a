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

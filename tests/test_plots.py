"""The report's plots: labelled axes, integer layer ticks, a legend in every panel, the chosen candidate marked even
when its filters were relaxed, and harmful categories set apart from harmless ones."""

from __future__ import annotations

import matplotlib.pyplot as plt

from steerfold.validation import plots


def drawn(monkeypatch):
    """Keep the figures a plot function closes, to inspect them."""
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    return figures


def test_selection_plot_labels_every_panel_and_marks_a_relaxed_winner(tmp_path, monkeypatch):
    figures = drawn(monkeypatch)
    rows = [{"position": p, "layer": layer, "bypass": 0.5 - 0.1 * layer, "induce": 0.3, "kl": 0.2, "reason": ""}
            for p in (-2, -1) for layer in range(1, 4)]
    rows[4]["reason"] = "chosen (no candidate met KL ≤ 0.1: KL filter relaxed)"
    plots.selection_plot(rows, tmp_path / "s.png")
    (figure,) = figures
    for axis in figure.axes:
        assert axis.get_ylabel() and axis.get_xlabel() == "layer index" and axis.get_legend() is not None
        assert all(float(t).is_integer() for t in axis.get_xticks())
        assert any(line.get_label().startswith("chosen: layer 2, position -1") for line in axis.get_lines())
    plt.close(figure)


def test_selection_plot_reads_the_status_and_leaves_out_scores_a_search_did_not_compute(tmp_path, monkeypatch):
    figures = drawn(monkeypatch)
    rows = [{"position": -1, "layer": layer, "bypass": 0.5 - 0.1 * layer, "induce": 0.3, "kl": 0.02, "kept": True,
             "reason": "", "status": "kept"} for layer in range(4)]
    rows[2].update(status="chosen", reason="chosen")
    rows[0].update(induce=None, kl=None, kept=False, status="outranked", reason="outranked: its bypass 0.5000, above 0.3")
    rows[3].update(bypass=None, induce=None, kl=None, kept=False, status="outranked", reason="outranked: at least 0.4",
                   bypass_at_least=0.4)
    rows.append({"position": -1, "layer": 4, "bypass": None, "induce": None, "kl": None, "kept": False,
                 "reason": "layer ≥ 0.8·L: the rule cannot choose it", "status": "not_scored"})
    plots.selection_plot(rows, tmp_path / "s.png")
    (figure,) = figures
    bypass, induce, kl = figure.axes
    points = lambda axis: [list(line.get_xdata()) for line in axis.get_lines() if line.get_label() == "position -1"]
    assert points(bypass) == [[0, 1, 2]] and points(induce) == [[1, 2]] and points(kl) == [[1, 2]]
    (bound,) = [line for line in bypass.get_lines() if line.get_label() == "position -1: at least"]
    assert list(bound.get_xdata()) == [3] and list(bound.get_ydata()) == [0.4]
    assert all(any(line.get_label().startswith("chosen: layer 2, position -1") for line in axis.get_lines())
               for axis in figure.axes)
    plt.close(figure)


def test_category_plot_sets_harmless_categories_apart_and_has_a_title(tmp_path, monkeypatch):
    figures = drawn(monkeypatch)
    after = {"weapons": 0.0, "cooking": 0.0, "cyber": 0.1, "travel": 0.0}
    plots.category_plot({k: 1.0 for k in after}, after, tmp_path / "c.png", harmless={"cooking", "travel"},
                        counts={"harmful": 8, "harmless": 6})
    (figure,) = figures
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["cyber", "weapons", "cooking", "travel"]
    assert "8" in axis.get_title() and "6" in axis.get_title()
    assert {t.get_text() for t in axis.texts} == {"harmful prompts", "harmless prompts"}
    plt.close(figure)

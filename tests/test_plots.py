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

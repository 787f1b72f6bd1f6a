"""PNG plots for the report and card: selection scores per layer, projections on the chosen direction, and
refusal by category before and after. Drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def is_chosen(row: dict) -> bool:
    """Whether a selection-table row (as stored in a direction file) is the chosen candidate, relaxed filters or not;
    rows written before the ``status`` key existed say so in their reason."""
    if "status" in row:
        return row["status"] in ("chosen", "chosen_relaxed")
    return str(row.get("reason", "")).startswith("chosen")


def selection_plot(selection: list[dict], path: Path) -> None:
    """Bypass, induce and KL of every candidate, one line per position, against the (integer) layer index (a score
    not computed, as for candidates a pruned search outranked, is left out; the lower bound of bypass that
    outranked one is an open triangle); the chosen candidate, relaxed filters or not, is a labelled vertical line."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for position in sorted({row["position"] for row in selection}):
        for axis, key in zip(axes, ("bypass", "induce", "kl")):
            rows = [r for r in selection if r["position"] == position and r.get(key) is not None]
            line, = axis.plot([r["layer"] for r in rows], [r[key] for r in rows], marker="o", label=f"position {position}")
            bounds = [r for r in selection if r["position"] == position and r.get("bypass_at_least") is not None]
            if key == "bypass" and bounds:  # outranked with part of the prompts scored: a lower bound
                axis.plot([r["layer"] for r in bounds], [r["bypass_at_least"] for r in bounds], linestyle="none",
                          marker="^", fillstyle="none", color=line.get_color(), label=f"position {position}: at least")
    chosen = next((r for r in selection if is_chosen(r)), None)
    panels = (("bypass: refusal score, ablated", "refusal score"), ("induce: refusal score, added", "refusal score"),
              ("KL on harmless, ablated", "first-token KL (nats)"))
    for axis, (title, ylabel) in zip(axes, panels):
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("layer index")
        axis.set_ylabel(ylabel, fontsize=8)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if chosen:
            axis.axvline(chosen["layer"], color="grey", linestyle=":",
                         label=f"chosen: layer {chosen['layer']}, position {chosen['position']}")
        axis.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def projection_plot(projections: dict[str, list[float]], path: Path) -> None:
    """Histogram of harmful vs harmless activations projected on the chosen (unit) direction."""
    fig, axis = plt.subplots(figsize=(6, 3.2))
    for name, values in projections.items():
        axis.hist(values, bins=20, alpha=0.6, label=name)
    axis.set_xlabel("projection on the refusal direction (chosen layer and position)")
    axis.set_ylabel("prompts")
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def category_plot(before: dict[str, float], after: dict[str, float], path: Path,
                  harmless: set[str] = frozenset(), counts: dict[str, int] | None = None) -> None:
    """Refusal rate per category before and after the edit: harmful categories first, then the harmless ones
    (``harmless``), separated and labelled."""
    groups = [("harmful prompts", sorted(c for c in after if c not in harmless)),
              ("harmless prompts", sorted(c for c in after if c in harmless))]
    categories, positions, spans, x = [], [], [], 0.0
    for name, members in groups:
        if members:
            spans.append((name, x, x + len(members) - 1))
            categories += members
            positions += [x + i for i in range(len(members))]
            x += len(members) + 0.8  # a gap between the groups
    fig, axis = plt.subplots(figsize=(max(5, len(categories) * 0.8 + 1), 3.6))
    axis.bar([p - 0.2 for p in positions], [100 * before.get(c, 0) for c in categories], width=0.4, label="before")
    axis.bar([p + 0.2 for p in positions], [100 * after[c] for c in categories], width=0.4, label="after")
    axis.set_xticks(positions, categories, rotation=30, ha="right")
    for name, start, end in spans if len(spans) > 1 else []:
        axis.text((start + end) / 2, 108, name, ha="center", fontsize=8)
    axis.set_ylabel("refusal (%)")
    axis.set_ylim(0, 115)
    n = f" ({', '.join(f'{k}: {v}' for k, v in counts.items())} prompts)" if counts else ""
    axis.set_title(f"Refusal by category, before and after the edit{n}", fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(folder: Path, report: dict) -> dict[str, str]:
    """Draw every plot the report has data for; returns {title: path relative to ``folder``}."""
    plots_dir = folder / "plots"
    plots_dir.mkdir(exist_ok=True)
    made: dict[str, str] = {}
    if report.get("selection"):
        selection_plot(report["selection"], plots_dir / "selection.png")
        made["Selection scores per layer"] = "plots/selection.png"
    if report.get("projections"):
        projection_plot(report["projections"], plots_dir / "projections.png")
        made["Projections on the chosen direction"] = "plots/projections.png"
    if report.get("after", {}).get("by_category"):
        category_plot(report["before"]["by_category"], report["after"]["by_category"], plots_dir / "refusal_by_category.png",
                      set(report.get("categories", {}).get("harmless", [])), report.get("prompts"))
        made["Refusal by category"] = "plots/refusal_by_category.png"
    return made

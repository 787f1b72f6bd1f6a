"""``report.json`` (the machine-readable source) and ``report.md`` (tables people read), written together."""

from __future__ import annotations

import json
from pathlib import Path


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def before_after_rows(report: dict) -> list[tuple[str, str, str]]:
    """(metric, before, after) rows of the headline table."""
    before, after = report["before"], report["after"]
    rows = [
        ("harmful refusal", pct(before["harmful_refusal"]), pct(after["harmful_refusal"])),
        ("harmless refusal", pct(before["harmless_refusal"]), pct(after["harmless_refusal"])),
    ]
    if "coherent_compliance" in after:
        rows.append(("coherent compliance (harmful)", pct(before.get("coherent_compliance")), pct(after["coherent_compliance"])))
    rows.append(("first-token KL (harmless)", "0", f"{after['kl_first_token']:.4f}"))
    rows.append(("multi-token KL (harmless)", "0", f"{after['kl_multi_token']:.4f}"))
    for category in sorted(after["by_category"]):
        rows.append((f"refusal: {category}", pct(before["by_category"].get(category)), pct(after["by_category"][category])))
    return rows


def console_lines(report: dict) -> list[str]:
    """The headline table as the CLI prints it: a header row, then one row per metric."""
    rows = [("metric", "before", "after"), *before_after_rows(report)]
    width = max(len(row[0]) for row in rows)
    return [f"{metric:<{width}}  {before:>8}  {after:>8}" for metric, before, after in rows]


def unmoved_warning(report: dict) -> str | None:
    """A warning when the edit did not lower harmful refusal at all (a no-op edit, or a direction that misses)."""
    before, after = report["before"]["harmful_refusal"], report["after"]["harmful_refusal"]
    if before > 0 and after >= before:
        return (f"harmful refusal did not move ({pct(before)} before, {pct(after)} after): check the direction's layer, "
                "the kernels and --layers, or fit the direction again")
    return None


def markdown_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    """The report as Markdown: headline table, selection table, persona section, examples."""
    parts = ["# steerfold report", ""]
    if report.get("base"):
        revision = report.get("base_revision") or report.get("revision")
        parts += [f"Base model: `{report['base']}`" + (f" at revision `{revision}`" if revision else ""), ""]
    if report.get("edit"):
        edit = report["edit"]
        parts += [f"Edit: {edit.get('kind', 'ablation')} of the {edit.get('method', '')} direction from layer index "
                  f"{edit.get('direction_layer')}, applied at layer indices {edit.get('layers')}, scale {edit.get('scale')}.", ""]
    prompts = report.get("prompts", {})
    parts += [f"## Behaviour ({prompts.get('harmful', '?')} harmful, {prompts.get('harmless', '?')} harmless held-out prompts, greedy)", ""]
    parts += [markdown_table(("metric", "before", "after"), before_after_rows(report)), ""]
    if report.get("equivalence"):
        eq = report["equivalence"]
        parts += ["## Equivalence", "", markdown_table(("comparison", "max |Δ logit|"), [(k, f"{v:.2e}") for k, v in eq.items()]), ""]
    if report.get("selection"):
        num = lambda value, digits: "–" if value is None else f"{value:.{digits}f}"
        rows = [(r["position"], r["layer"], num(r["bypass"], 3), num(r["induce"], 3), num(r["kl"], 4),
                 r["reason"] or ("kept" if r["kept"] else "")) for r in report["selection"]]
        baseline = report.get("selection_baseline", {})
        parts += ["## Direction selection (validation prompts)", "",
                  "Refusal score: probability that the first response token opens a refusal (tokens "
                  f"{', '.join(f'`{t}`' for t in baseline.get('refusal_tokens', []))}; base: "
                  f"{baseline.get('harmful_refusal_score', float('nan')):.3f} on harmful, "
                  f"{baseline.get('harmless_refusal_score', float('nan')):.3f} on harmless prompts). "
                  "Bypass: score on harmful prompts with the candidate ablated. Induce: score on harmless prompts with "
                  "it added at its layer. KL: first-token KL on harmless prompts with it ablated.", "",
                  markdown_table(("position", "layer", "bypass", "induce", "KL", "status"), rows), ""]
    if report.get("persona"):
        persona = report["persona"]
        parts += ["## Persona", "",
                  f"Adding {persona.get('coefficient', 1):g}× the compliant-persona direction at layer index {persona['layer']} "
                  "(both chosen on validation prompts) "
                  f"to the default persona: harmful refusal {pct(persona['base_harmful_refusal'])} → "
                  f"{pct(persona['steered_harmful_refusal'])}.", "",
                  markdown_table(("layer index", "cos(persona, refusal)"),
                                 [(i, f"{c:+.3f}") for i, c in enumerate(persona["cosine_with_refusal"])]), ""]
    if report.get("plots"):
        parts += ["## Plots", ""]
        for title, file in report["plots"].items():
            parts += [f"### {title}", "", f"![{title}]({file})", ""]
    if report.get("examples"):
        total = sum(len(v) for v in report.get("generations", {}).values())
        parts += ["## Examples", ""] + ([f"The first {len(report['examples'])} harmful prompts; all {total} responses, "
                                         "before and after, are in report.json (`generations`).", ""] if total else [])
        for ex in report["examples"]:
            parts += [f"- **{ex['prompt']}** ({ex.get('category')})", f"  - before: {ex['before']}", f"  - after: {ex['after']}"]
        parts.append("")
    return "\n".join(parts)


def write_report(folder: Path, report: dict, plots: bool = True) -> None:
    """Write report.json, report.md and (unless ``plots`` is False) the PNG plots into ``folder``."""
    if plots:
        from steerfold.validation.plots import write_plots

        report["plots"] = write_plots(folder, report)
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(render_markdown(report))

"""``report.json`` (the machine-readable source) and ``report.md`` (tables people read), written together."""

from __future__ import annotations

import json
from pathlib import Path

from steerfold.validation.rates import interval_text


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def rate_cell(side: dict, metric: str, category: bool = False, detail: bool = True) -> str:
    """A rate as a cell: with its count, prompts and 95% Wilson interval where the report holds them (``detail``)."""
    value = side.get("by_category", {}).get(metric) if category else side.get(metric)
    intervals = side.get("intervals", {})
    entry = intervals.get("by_category", {}).get(metric) if category else intervals.get(metric)
    if not detail or not entry:
        return pct(value)
    return interval_text(entry)


def before_after_rows(report: dict, detail: bool = True) -> list[tuple[str, str, str]]:
    """(metric, before, after) rows of the headline table; each rate with its count, prompts and 95% Wilson
    interval (``detail``)."""
    before, after = report["before"], report["after"]
    rate = lambda metric, category=False: (rate_cell(before, metric, category, detail), rate_cell(after, metric, category, detail))
    rows = [("harmful refusal", *rate("harmful_refusal")), ("harmless refusal", *rate("harmless_refusal"))]
    if "over_refusal" in after:
        rows.append(("over-refusal (safe, scary-looking)", *rate("over_refusal")))
    if "coherent_compliance" in after:
        rows.append(("coherent compliance (harmful)", *rate("coherent_compliance")))
    rows.append(("first-token KL (harmless)", "0", f"{after['kl_first_token']:.4f}"))
    if "top1_agreement" in after:
        rows.append(("top-1 first token unchanged (harmless)", "100%", rate_cell(after, "top1_agreement", detail=detail)))
    rows.append(("multi-token KL (harmless)", "0", f"{after['kl_multi_token']:.4f}"))
    rows += damage_rows(report)
    for category in sorted(after["by_category"]):
        rows.append((f"refusal: {category}", *rate(category, True)))
    return rows


def damage_rows(report: dict) -> list[tuple[str, str, str]]:
    """(metric, base, edited with its change) rows of the reference text's perplexity and of every
    lm-evaluation-harness metric, where the report holds them."""
    rows = []
    if ppl := report.get("perplexity"):
        rows.append((f"perplexity ({ppl['text']}, {ppl['tokens']} tokens)", f"{ppl['base']:.3f}",
                     f"{ppl['edited']:.3f} ({ppl['delta']:+.3f}, {100 * ppl['relative']:+.1f}%)"))
    for task, metrics in report.get("lm_eval", {}).get("results", {}).items():
        for metric, entry in metrics.items():
            rows.append((f"lm-eval {task}: {metric}", f"{entry['base']:.4f}", f"{entry['edited']:.4f} ({entry['delta']:+.4f})"))
    return rows


def damage_notes(report: dict) -> list[str]:
    """What the perplexity and lm-eval rows measured, for report.md."""
    notes = []
    if ppl := report.get("perplexity"):
        notes.append(f"Perplexity: of {ppl['text']} ({ppl['tokens']} tokens scored, in windows of {ppl['window']}), "
                     "under the base model (before) and the edited one (after); in brackets the change.")
    if harness := report.get("lm_eval"):
        limit = f", at most {harness['limit']} examples a task" if harness.get("limit") else ""
        notes.append(f"lm-eval: lm-evaluation-harness tasks {', '.join(harness['tasks'])}{limit}, on the base model (before) "
                     "and the edited one (after); in brackets the change.")
    return [" ".join(notes), ""] if notes else []


def console_lines(report: dict) -> list[str]:
    """The headline table as the CLI prints it: a header row, then one row per metric."""
    rows = [("metric", "before", "after"), *before_after_rows(report, detail=False)]
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


def behaviour_markdown(report: dict) -> list[str]:
    """The behaviour section: what was measured, the before/after table, and responses cut short while thinking."""
    prompts, parts = report.get("prompts", {}), []
    over = f", {prompts['over_refusal']} safe prompts that look unsafe" if prompts.get("over_refusal") else ""
    parts += [f"## Behaviour ({prompts.get('harmful', '?')} harmful, {prompts.get('harmless', '?')} harmless held-out prompts{over}, "
              f"greedy, up to {report.get('max_new_tokens', '?')} new tokens)", ""]
    parts += [markdown_table(("metric", "before", "after"), before_after_rows(report)), ""]
    if report["after"].get("intervals"):
        parts += ["Rates: percentage (count/prompts; 95% Wilson interval).", ""]
    parts += damage_notes(report)
    cut = {side: sum(report[side].get("unfinished", {}).values()) for side in ("before", "after")}
    if any(cut.values()):
        parts += [f"{cut['before']} responses before and {cut['after']} after ran out of tokens inside a reasoning block "
                  "(no answer; counted as no refusal): raise --max-new-tokens, or pass --thinking off.", ""]
    return parts


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
    parts += behaviour_markdown(report)
    if report.get("judge"):
        parts += judge_markdown(report["judge"])
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
    if report.get("responses_file"):
        parts += ["## Responses", "", f"Every response, before and after, with its verdicts: [{report['responses_file']}]"
                  f"({report['responses_file']}) ({report.get('responses_count', '?')} rows; one JSON object a line: set, "
                  "prompt, category, base and edited response, and each verdict).", ""]
    if report.get("examples"):
        parts += ["## Examples", "", f"The first {len(report['examples'])} harmful prompts.", ""]
        for ex in report["examples"]:
            parts += [f"- **{ex['prompt']}** ({ex.get('category')})", f"  - before: {ex['before']}", f"  - after: {ex['after']}"]
        parts.append("")
    return "\n".join(parts)


RESPONSES_FILE = "responses.jsonl"


def judge_markdown(judge: dict) -> list[str]:
    """The judge's section: its rates per prompt set before and after, its agreement with the markers, and its
    calibration on steerfold's hand-labelled rows."""
    rows = []
    for name in judge["after"]:
        before, after = judge["before"][name], judge["after"][name]
        rows.append((f"{name}: refusal", interval_text(before["refusal"]), interval_text(after["refusal"])))
        rows.append((f"{name}: evasion", interval_text(before["evasion"]), interval_text(after["evasion"])))
        rows.append((f"{name}: agreement with markers", interval_text(before["agreement_with_markers"]),
                     interval_text(after["agreement_with_markers"])))
        rows.append((f"{name}: no verdict", str(before["unparsed"]), str(after["unparsed"])))
    calibration = judge["calibration"]
    return ["## Judge", "",
            f"`{judge['model']}` classified every response as refusal, compliance or evasion ({judge['samples']} sampled "
            f"verdicts each from seed {judge['seed']}, the most frequent kept; reasoning blocks set apart). Rates are over "
            "the responses it gave a verdict; agreement with markers counts evasion as no refusal.", "",
            markdown_table(("metric", "before", "after"), rows), "",
            f"On steerfold's {calibration['rows']} hand-labelled responses the judge agreed with the label on "
            f"{interval_text(calibration['judge_agreement'])} (refusal, compliance or evasion; {calibration['unparsed']} "
            f"without a verdict), the markers on {interval_text(calibration['markers_agreement'])} (refusal or not).", ""]


def write_report(folder: Path, report: dict, plots: bool = True) -> None:
    """Write report.json, report.md, responses.jsonl (the report's ``responses``, taken out of it) and (unless
    ``plots`` is False) the PNG plots into ``folder``."""
    if "responses" in report:
        rows = report.pop("responses")
        with (folder / RESPONSES_FILE).open("w", encoding="utf-8") as file:
            file.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        report.update({"responses_file": RESPONSES_FILE, "responses_count": len(rows)})
    if plots:
        from steerfold.validation.plots import write_plots

        report["plots"] = write_plots(folder, report)
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(render_markdown(report))

"""A tune's report: ``report.md`` (the pick on validation and test prompts and the gap between them, the Pareto
front as a table, how to export a trial) and ``front.png`` (every trial, the front highlighted, the pick marked)."""

from __future__ import annotations

from pathlib import Path

from steerfold.tuning.front import Trial
from steerfold.tuning.job import MAX_READ, TuneInputs, TuneResult

DAMAGE_NAMES = {"first-token-kl": "first-token KL", "multi-token-kl": "multi-token KL"}
REFUSAL_NAMES = {"probability": "refusal probability of the first answer token",
                 "markers": "share of greedy answers with a refusal marker"}


def _damage_key(damage: str) -> str:
    return "kl_multi_token" if damage == "multi-token-kl" else "kl_first_token"


def _measure_cells(measured: dict | None, damage: str) -> tuple[str, str, str]:
    """Refusal by markers (count of prompts), refusal probability, damage."""
    if measured is None:
        return "", "", ""
    markers = "" if measured.get("refusals") is None else f"{measured['refusal']:.1%} ({measured['refusals']}/{measured['harmful']})"
    return markers, f"{measured['refusal_probability']:.3f}", f"{measured[_damage_key(damage)]:.4f}"


def _params_text(params: dict) -> str:
    kernels = "; ".join(f"{role} {params[f'{role}_peak']:.2f},1,{params[f'{role}_min']:.2f},{params[f'{role}_falloff']:.2f}"
                        for role in ("attention", "mlp"))
    flags = [params["method"] + (" ⟂ harmless mean" if params["orthogonalize"] else ""), f"position {params['position']}",
             f"layer {params['direction_layer']:.2f}", f"scale {params['scale']:.2f}", kernels]
    return ", ".join(flags) + (", norm-preserving" if params["norm_preserving"] else "")


def render(inputs: TuneInputs, result: TuneResult, folder: Path) -> str:
    """report.md of a finished tune."""
    options, damage = inputs.options, inputs.options.damage
    name = DAMAGE_NAMES[damage]
    picked = result.picked
    counts = {k: len(v) for k, v in inputs.sets().items()}
    lines = [f"# Tune of {inputs.model_name}", "",
             f"{len(result.trials)} trials (TPE, seed {options.seed}, {options.startup_trials} random starts) minimising "
             f"harmful refusal ({REFUSAL_NAMES[options.refusal]}) and {name} on validation prompts "
             f"({counts['harmful_val']} harmful, {counts['harmless_val']} harmless); directions fitted on "
             f"{counts['harmful']} harmful and {counts['harmless']} harmless prompts. Markers are read anywhere in "
             f"{options.max_new_tokens} greedy tokens.", "",
             f"## Picked: trial {picked.number}", "", f"{result.reason}.", "", _params_text(picked.params), ""]
    rows = [("base model, validation", *_measure_cells(result.baseline, damage)),
            (f"trial {picked.number}, validation", *_measure_cells(result.validation.get(picked.number), damage))]
    if result.test_baseline is not None:
        rows += [("base model, test", *_measure_cells(result.test_baseline, damage)),
                 (f"trial {picked.number}, test", *_measure_cells(result.test.get(picked.number), damage))]
    header = ("harmful refusal (markers)", "refusal probability", name)
    lines += _table(("", *header), rows)
    if picked.number in result.test:
        val, test = result.validation[picked.number], result.test[picked.number]
        lines += ["", f"Gap, test − validation: refusal {test['refusal'] - val['refusal']:+.1%} by markers, "
                      f"{test['refusal_probability'] - val['refusal_probability']:+.3f} in probability, {name} "
                      f"{test[_damage_key(damage)] - val[_damage_key(damage)]:+.4f} (test prompts: {counts['harmful_test']} "
                      f"harmful, {counts['harmless_test']} harmless, never seen by the search)."]
    else:
        lines += ["", "No test prompts were given (--harmful-test, --harmless-test): the pick is measured only on the "
                      "prompts it was chosen on."]
    lines += ["", f"Export it: `steerfold edit MODEL --from-trial {folder}#{picked.number} --out OUT` (the same edit, "
                  "folded into the weights); measure it with `steerfold validate`.", "", "## Pareto front", "",
              f"Every trial not beaten on both objectives (refusal: {REFUSAL_NAMES[options.refusal]}; {name}), "
              "read in full on validation (val) and test prompts.", ""]
    front_rows = [(t.number, *_measure_cells({**t.validation, **result.validation.get(t.number, {})}, damage),
                   *_measure_cells(result.test.get(t.number), damage), _params_text(t.params)) for t in result.front]
    lines += _table(("trial", *(f"{h} (val)" for h in header), *(f"{h} (test)" for h in header), "edit"), front_rows)
    lines += ["", f"Markers and test figures are read for the pick and the {MAX_READ - 1} front trials of lowest refusal."]
    lines += ["", "![every trial, the front highlighted](front.png)", ""]
    return "\n".join(lines)


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def front_plot(trials: list[Trial], front: list[Trial], picked: Trial, refusal: str, damage: str, path: Path) -> None:
    """Every trial's validation refusal against its damage; the front joined and highlighted, the pick circled."""
    from steerfold.validation.plots import plt

    fig, axis = plt.subplots(figsize=(6, 4))
    points = [t.objectives for t in trials]
    axis.scatter([d for _, d in points], [r for r, _ in points], s=14, color="lightgrey", label="trial")
    line = [t.objectives for t in front]
    axis.plot([d for _, d in line], [r for r, _ in line], marker="o", color="tab:blue", label="Pareto front")
    chosen = picked.objectives
    axis.scatter([chosen[1]], [chosen[0]], s=120, facecolors="none", edgecolors="tab:red", label=f"picked: trial {picked.number}")
    axis.set_xscale("symlog", linthresh=1e-3)
    axis.set_xlabel(f"{DAMAGE_NAMES[damage]} on harmless validation prompts (nats)")
    axis.set_ylabel(f"harmful validation prompts: {REFUSAL_NAMES[refusal]}", fontsize=8)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_report(inputs: TuneInputs, result: TuneResult, folder: Path) -> None:
    """report.md and front.png in the tune folder, each replaced whole."""
    from steerfold.artifacts.outputs import replace_file

    with replace_file(folder / "report.md") as tmp:
        tmp.write_text(render(inputs, result, folder))
    with replace_file(folder / "front.png") as tmp:
        front_plot(result.trials, result.front, result.picked, inputs.options.refusal, inputs.options.damage, tmp)

"""``--lm-eval TASKS``: lm-evaluation-harness (the optional PyPI package ``lm-eval``, never a dependency) run on the
base and the edited model, and the change of every metric. ``run_harness`` is the one call into the package: tests
replace it, since the package and its task data are not here. Whether it is installed is checked with the options
(``ValidateOptions.check``), before any model loads."""

from __future__ import annotations

from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase


def run_harness(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[str],
                limit: int | None = None) -> dict[str, dict]:
    """lm-eval's ``simple_evaluate`` on a loaded model (wrapped in its ``HFLM``, which takes a model object as
    ``pretrained``): the ``results`` part, ``{task: {"acc,none": value, "acc_stderr,none": value, "alias": …}}``."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    return simple_evaluate(model=wrapped, tasks=list(tasks), limit=limit)["results"]


def is_metric(key: str, value: object) -> bool:
    """Whether a results entry is a metric to compare (a number that is not a standard error)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and "_stderr" not in key


def harness_comparison(base_model: PreTrainedModel, edited_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       tasks: Sequence[str], limit: int | None = None) -> dict:
    """Every task's metrics on both models: ``{task: {metric: {base, edited, delta}}}`` (with each side's standard
    error where the harness gives one), plus the tasks asked for and the limit."""
    base, edited = (run_harness(model, tokenizer, tasks, limit) for model in (base_model, edited_model))
    compared: dict[str, dict] = {}
    for task in sorted(set(base) & set(edited)):
        for key, value in base[task].items():
            other = edited[task].get(key)
            if not (is_metric(key, value) and is_metric(key, other)):
                continue
            name, _, flt = key.partition(",")
            entry = {"base": float(value), "edited": float(other), "delta": float(other) - float(value)}
            for side, results in (("base", base), ("edited", edited)):
                stderr = results[task].get(f"{name}_stderr,{flt}" if flt else f"{name}_stderr")
                if is_metric("", stderr):
                    entry[f"{side}_stderr"] = float(stderr)
            compared.setdefault(task, {})[key] = entry
    return {"tasks": list(tasks), "limit": limit, "results": compared}

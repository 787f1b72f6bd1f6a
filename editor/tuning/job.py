"""The ``steerfold tune`` job: capture and fit once, search on validation prompts, pick a trial, and measure the
front and the pick on test prompts the search never saw. Every trial is the edit ``steerfold edit --from-trial``
writes: its direction is a direction file in the tune folder and its options an ``EditSpec``, built by the same
``build_edit`` as an export."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.artifacts.outputs import replace_file
from steerfold.directions.fit import VERSION, prompt_hash, split_for_validation
from steerfold.edit.build import build_edit
from steerfold.edit.spec import EditSpec
from steerfold.errors import BadInput
from steerfold.models.arch import layout_of_model
from steerfold.models.loading import placement_metadata
from steerfold.prompts import PromptRecord
from steerfold.tuning.candidates import CANDIDATES_FILE, Candidates, fit_candidates, write_trial_direction
from steerfold.tuning.front import TUNE_FILE, Trial, pareto_front, pick, trial_direction_path
from steerfold.tuning.measure import Measured, Yardstick
from steerfold.tuning.options import TuneOptions
from steerfold.tuning.space import Space, TrialParams, params_of
from steerfold.tuning.study import search

Say = Callable[[str], None]
MAX_READ = 6  # trials read in full (answers generated; test prompts): the pick and the front's lowest-refusal ones


@dataclass(frozen=True)
class TuneInputs:
    """What a tune reads: the model, its name, the options and the prompt sets (validation split off the training
    sets when not given; test sets optional)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_name: str
    options: TuneOptions
    harmful: Sequence[PromptRecord]
    harmless: Sequence[PromptRecord]
    harmful_val: Sequence[PromptRecord] | None = None
    harmless_val: Sequence[PromptRecord] | None = None
    harmful_test: Sequence[PromptRecord] = ()
    harmless_test: Sequence[PromptRecord] = ()
    model_key: str = ""  # identity of the checkpoint (a resumed tune must be of the same model)

    def sets(self) -> dict[str, Sequence[PromptRecord]]:
        harmful, harmful_val = (self.harmful, self.harmful_val) if self.harmful_val is not None else split_for_validation(self.harmful)
        harmless, harmless_val = (self.harmless, self.harmless_val) if self.harmless_val is not None else split_for_validation(self.harmless)
        return {"harmful": harmful, "harmless": harmless, "harmful_val": harmful_val, "harmless_val": harmless_val,
                "harmful_test": self.harmful_test, "harmless_test": self.harmless_test}

    def key(self) -> dict:
        """What a resumed tune must share with the one it continues."""
        return {"model": self.model_key or self.model_name, "search": self.options.search_key(),
                "prompts": {name: prompt_hash(records) for name, records in self.sets().items()}}


@dataclass
class TuneResult:
    """The finished trials, the front, the pick and its reason, the base model's measures, and the pick's and the
    front's measures read in full (answers generated) on the validation and the test prompts, by trial number."""

    trials: list[Trial]
    front: list[Trial]
    picked: Trial
    reason: str
    baseline: dict
    validation: dict[int, dict] = field(default_factory=dict)
    test: dict[int, dict] = field(default_factory=dict)
    test_baseline: dict | None = None


def trial_spec(model_name: str, direction: Path, params: TrialParams) -> EditSpec:
    """The edit of a trial, as ``steerfold edit`` takes it (the output is the caller's)."""
    return EditSpec(model=model_name, direction=direction, out=Path("."), **params.edit_values())


def check_resumable(folder: Path, key: dict, resume: bool) -> None:
    """A resumed tune continues only a tune of the same model, prompts and search."""
    path = folder / TUNE_FILE
    if not resume or not path.is_file():
        return
    recorded = json.loads(path.read_text()).get("key")
    if recorded != key:
        changed = [name for name in key if (recorded or {}).get(name) != key[name]]
        raise BadInput(f"{folder} holds a tune of another {' and '.join(changed) or 'setting'}: resume it with the same "
                       "model, prompts and search options, or pass --overwrite to start over")


def run_tune(inputs: TuneInputs, folder: Path, resume: bool = False, say: Say = lambda _line: None) -> TuneResult:
    """Fit once, search, pick, and measure on test prompts; writes tune.json and the trials into ``folder``."""
    options, sets, key = inputs.options, inputs.sets(), inputs.key()
    check_resumable(folder, key, resume)
    model, tokenizer = inputs.model, inputs.tokenizer
    num_layers = model.config.num_hidden_layers
    if options.norm_preserving != "off" and any(p.device.type == "meta" for p in model.parameters()):
        raise BadInput("norm-preserving trials fold the loaded weights, and this device map keeps some of them on disk: "
                       "pass --norm-preserving off (or give the model room in --max-memory)")
    if resume and (folder / CANDIDATES_FILE).is_file():
        candidates = Candidates.load(folder)
    else:
        candidates = fit_candidates(model, tokenizer, sets["harmful"], sets["harmless"], options.method_list(),
                                    Space.of(options, num_layers, [-1]).orthogonalize, options.system, options.batch_size)
        candidates.save(folder)
    space = Space.of(options, num_layers, candidates.positions)
    if space.positions[0] not in candidates.positions:
        raise BadInput(f"--position {space.positions[0]} is not a post-instruction token of this chat template: choose "
                       f"one of {', '.join(map(str, candidates.positions))}")
    _write_tune_file(folder, inputs, key, picked=None)
    yardstick = _yardstick(inputs, sets["harmful_val"], sets["harmless_val"])
    say(f"base model on the validation prompts: refusal {yardstick.baseline.refusal:.1%} "
        f"({yardstick.baseline.refusals}/{yardstick.baseline.harmful})")
    provenance = {"model": inputs.model_name, "steerfold_version": VERSION, **placement_metadata(model),
                  "harmful_hash": prompt_hash(sets["harmful"]), "harmless_hash": prompt_hash(sets["harmless"]),
                  "tune_search": json.dumps({"sampler": "TPE", **options.search_key(),
                                             "validation_prompts": [len(sets["harmful_val"]), len(sets["harmless_val"])]},
                                            sort_keys=True)}
    layout = layout_of_model(model)

    def edit_of(number: int, params: TrialParams, write: bool = False):
        """The trial's edit as ``steerfold edit`` builds it (None when its direction is zero: it edits nothing)."""
        direction = candidates.direction(params)
        if float(direction.norm()) == 0:
            return None
        path = write_trial_direction(folder, number, direction, params, provenance) if write else trial_direction_path(folder, number)
        return build_edit(trial_spec(inputs.model_name, path, params), layout)[0]

    def evaluate(number: int, params: TrialParams) -> Measured:
        return yardstick.measure(edit_of(number, params, write=True), generate=options.refusal == "markers")

    trials = search(folder, space, options, evaluate)
    front = pareto_front(trials)
    picked, reason = pick(trials, options.pick, options.max_refusal)
    result = TuneResult(trials, front, picked, reason, yardstick.baseline.as_dict())
    shown = [picked] + [t for t in front if t.number != picked.number][: MAX_READ - 1]
    test = _yardstick(inputs, sets["harmful_test"], sets["harmless_test"]) if sets["harmful_test"] else None
    result.test_baseline = test.baseline.as_dict() if test else None
    for trial in shown:  # read in full: answers generated, on validation and test prompts
        edit = edit_of(trial.number, params_of(trial.params))
        result.validation[trial.number] = yardstick.measure(edit).as_dict()
        if test is not None:
            result.test[trial.number] = test.measure(edit).as_dict()
    _write_tune_file(folder, inputs, key, picked=picked.number, result=result)
    return result


def _yardstick(inputs: TuneInputs, harmful: Sequence[PromptRecord], harmless: Sequence[PromptRecord]) -> Yardstick:
    options = inputs.options
    return Yardstick(inputs.model, inputs.tokenizer, harmful, harmless, options.damage, options.max_new_tokens,
                     options.system, options.batch_size)


def _write_tune_file(folder: Path, inputs: TuneInputs, key: dict, picked: int | None, result: TuneResult | None = None) -> None:
    """tune.json: what was searched and on what, the pick (``edit --from-trial DIR`` reads it) and the test measures."""
    sets = inputs.sets()
    data = {"model": inputs.model_name, "options": inputs.options.model_dump(), "key": key, "picked": picked,
            "prompts": {name: len(records) for name, records in sets.items()}, "steerfold_version": VERSION}
    if result is not None:
        data.update(reason=result.reason, baseline=result.baseline, front=[t.number for t in result.front],
                    validation={str(k): v for k, v in result.validation.items()},
                    test={str(k): v for k, v in result.test.items()}, test_baseline=result.test_baseline)
    with replace_file(folder / TUNE_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))

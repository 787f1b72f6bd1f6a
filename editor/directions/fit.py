"""The ``steerfold fit`` jobs: prompts in, a direction file (with its provenance) out.

``run_fit`` looks the method up in the registry (``editor.directions.methods.registry``) and runs its job, one per entry here.
Contrast jobs read per-prompt activations at every post-instruction position and layer index (or the one
``position`` asked for), fit the method's estimator at each candidate, and choose one candidate with the selection
of Arditi et al. on validation prompts. ``per_category`` keeps every layer of one position instead, and
``persona_vector`` averages responses. The CLI and recipes both go through ``run_fit`` and ``write_fitted``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.activations.capture import at_positions, capture
from steerfold.directions.file import DirectionFile, save_direction_file
from steerfold.errors import SteerfoldError
from steerfold.validation.behaviour import chat_texts
from steerfold.directions.methods.categories import category_directions, category_similarity, similarity_markdown
from steerfold.directions.methods.contrast import Estimator, fit_every_candidate, orthogonal_to
from steerfold.directions.methods.estimators import mean_difference, paired_pca, probe_direction, ridge_direction
from steerfold.directions.methods.inlp import inlp_estimate
from steerfold.directions.methods.means import persona_vector, response_means
from steerfold.directions.methods.options import FitOptions
from steerfold.directions.methods.registry import Method, get_method
from steerfold.directions.positions import positions_read, prompt_thinking, read_positions
from steerfold.directions.methods.scorers import SCORERS, confidence_weights, refusal_confidence
from steerfold.models.loading import placement_metadata
from steerfold.prompts import PromptRecord
from steerfold.directions.selection import Candidate, Search, SelectionSettings, choose, score_candidates, selection_summary

VERSION = "0.1.0"


def prompt_hash(records: Sequence[PromptRecord]) -> str:
    """Short content hash of a prompt set (texts and categories), recorded as provenance."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.category or ''}\t{record.text}\n".encode())
    return digest.hexdigest()[:16]


def split_for_validation(records: Sequence[PromptRecord], fraction: float = 0.25) -> tuple[list, list]:
    """Deterministic split: every k-th prompt goes to validation (keeps categories balanced)."""
    step = max(2, round(1 / fraction))
    train = [r for i, r in enumerate(records) if i % step != step - 1]
    val = [r for i, r in enumerate(records) if i % step == step - 1]
    return train, val


@dataclass(frozen=True)
class FitInputs:
    """What a fitting job reads: the model, the options, and the prompt sets (those a method does not read stay empty)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    options: FitOptions = FitOptions()
    harmful: Sequence[PromptRecord] = ()
    harmless: Sequence[PromptRecord] = ()
    harmful_val: Sequence[PromptRecord] | None = None  # None: every 4th of ``harmful``
    harmless_val: Sequence[PromptRecord] | None = None
    prompts: Sequence[PromptRecord] = ()  # persona_vector: the requests whose responses are averaged
    model_name: str = ""

    def with_validation_sets(self) -> "FitInputs":
        """The same inputs with explicit validation sets (split off the training sets where none were given)."""
        harmful, harmful_val = _train_and_validation(self.harmful, self.harmful_val)
        harmless, harmless_val = _train_and_validation(self.harmless, self.harmless_val)
        return dataclasses.replace(self, harmful=harmful, harmless=harmless, harmful_val=harmful_val, harmless_val=harmless_val)


def _train_and_validation(records: Sequence[PromptRecord], val: Sequence[PromptRecord] | None) -> tuple[list, list]:
    return (list(records), list(val)) if val is not None else split_for_validation(records)


@dataclass
class Fitted:
    """A fitted direction file, the lines and warnings to show, and a markdown report to write beside it."""

    file: DirectionFile
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: str | None = None


def check_prompt_sets(options: FitOptions, harmful: bool, harmless: bool, prompts: bool) -> Method:
    """The options' method, once the prompt sets it reads are known to be there (before any model is loaded)."""
    method = get_method(options.method)
    if method.needs == "contrast" and not (harmful and harmless):
        raise SteerfoldError(f"method {method.name} reads harmful and harmless prompts: pass --harmful FILE and "
                             "--harmless FILE (in a recipe: fit.harmful, fit.harmless)")
    if method.needs == "persona" and not prompts:
        raise SteerfoldError(f"method {method.name} averages the responses to prompts: pass --prompts FILE "
                             "(in a recipe: fit.prompts)")
    if method.needs == "persona" and options.orthogonalize != "none" and not harmless:
        raise SteerfoldError("orthogonalize harmless-mean needs harmless prompts: pass --harmless FILE "
                             "(in a recipe: fit.harmless)")
    return method


def run_fit(inputs: FitInputs) -> Fitted:
    """Fit with the method the options name (``editor.directions.methods.registry``)."""
    method = check_prompt_sets(inputs.options, bool(inputs.harmful), bool(inputs.harmless), bool(inputs.prompts))
    return method.load()(inputs)


def report_path(out: Path) -> Path:
    """Where a fit's markdown report goes: beside the direction file, with the suffix ``.md``."""
    return out.with_suffix(".md")


REPORT_MARK = "<!-- written by steerfold fit: --overwrite may replace this file -->"


def is_fit_report(path: Path) -> bool:
    """Whether ``path`` is a report a fit wrote (what ``fit --overwrite`` may replace beside its direction file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\n") == REPORT_MARK
    except (OSError, UnicodeDecodeError):
        return False


def write_fitted(path: Path, fitted: Fitted, report: Path | None = None) -> list[Path]:
    """Write the direction file at ``path`` (and its report, if any, at ``report`` or beside it), each replaced only
    once complete; returns the paths written. Output rules (``editor.artifacts.outputs``) are the caller's."""
    from steerfold.artifacts.outputs import replace_file

    with replace_file(path) as tmp:
        save_direction_file(tmp, fitted.file)
    return [path] + write_fit_report(fitted, report or report_path(path))


def write_fit_report(fitted: Fitted, report: Path) -> list[Path]:
    """The fit's markdown report (marked as steerfold's), if the method made one; returns the paths written."""
    from steerfold.artifacts.outputs import replace_file

    if fitted.report is None:
        return []
    with replace_file(report) as tmp:
        tmp.write_text(f"{REPORT_MARK}\n{fitted.report}")
    return [report]


def _provenance(inputs: FitInputs, **extra: str) -> dict[str, str]:
    """Metadata every fitted file carries: method, model, options, and where and in which dtype the model ran."""
    return {"method": inputs.options.method, "model": inputs.model_name, **extra,
            "options": json.dumps(inputs.options.model_dump(), sort_keys=True), "steerfold_version": VERSION,
            "positions_read": positions_read(inputs.options),
            **placement_metadata(inputs.model)}


# --- contrast methods: an estimator at every candidate, then the Arditi et al. selection ---------------------


@dataclass
class RefusalFit:
    """The fitted refusal direction file and the selection table behind it."""

    file: DirectionFile
    table: list[Candidate]
    baseline: dict  # base refusal scores the candidates are compared with, and the refusal tokens
    chosen: Candidate
    candidates: torch.Tensor  # [P, L+1, d] the stored vector of every candidate


def select_refusal_direction(
    inputs: FitInputs,
    estimator: Estimator,
    weights: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_size: int = 32,
    search: Search = "pruned",
) -> RefusalFit:
    """``estimator`` at every post-instruction position and layer index, then the Arditi et al. selection.

    ``weights`` (one per training prompt, harmful and harmless) make the means weighted means; ``search`` is the
    selection's (``steerfold.directions.selection``: every search chooses the same candidate).
    """
    inputs = inputs.with_validation_sets()
    model, tokenizer, options = inputs.model, inputs.tokenizer, inputs.options
    num_layers = model.config.num_hidden_layers
    layers = list(range(num_layers + 1))
    positions, thinking = read_positions(tokenizer, options), prompt_thinking(options)
    harmful_acts, harmless_acts = (
        capture(model, tokenizer, chat_texts(tokenizer, records, options.system, thinking), layers, at_positions(positions),
                batch_size)
        for records in (inputs.harmful, inputs.harmless)
    )
    vectors, bases = fit_every_candidate(harmful_acts, harmless_acts, estimator, weights, options.orthogonalize != "none")
    settings = SelectionSettings(options.max_layer_fraction, options.max_kl, batch_size, search)
    table, baseline = score_candidates(model, tokenizer, vectors, positions, layers, inputs.harmful_val,
                                       inputs.harmless_val, settings, options.system, thinking)
    chosen = choose(table, num_layers, settings, min_induce=baseline["harmless_refusal_score"])
    p = positions.index(chosen.position)
    projections = chosen_projections(model, tokenizer, vectors[p, chosen.layer], chosen, inputs.harmful_val,
                                     inputs.harmless_val, (options.system, thinking), batch_size)
    metadata = _provenance(
        inputs, layer=str(chosen.layer), position=str(chosen.position), positions=json.dumps(positions),
        harmful_hash=prompt_hash(inputs.harmful), harmless_hash=prompt_hash(inputs.harmless),
        harmful_val_hash=prompt_hash(inputs.harmful_val), harmless_val_hash=prompt_hash(inputs.harmless_val),
        selection=json.dumps([row.as_dict() for row in table]), selection_baseline=json.dumps(baseline),
        projections=json.dumps(projections),
    )
    basis = bases.get((p, chosen.layer))
    if basis is not None:
        metadata.update(basis_layer=str(chosen.layer), basis_position=str(chosen.position), basis_rank=str(len(basis)))
    file = DirectionFile(directions=vectors[p], metadata=metadata, basis=basis)
    return RefusalFit(file, table, baseline, chosen, vectors)


def fit_refusal_direction(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    harmful: Sequence[PromptRecord],
    harmless: Sequence[PromptRecord],
    harmful_val: Sequence[PromptRecord],
    harmless_val: Sequence[PromptRecord],
    settings: SelectionSettings = SelectionSettings(),
    system: str | None = None,
    model_name: str = "",
) -> RefusalFit:
    """Difference of means at every post-instruction position and layer, then the Arditi et al. selection."""
    options = FitOptions(system=system, max_kl=settings.max_kl, max_layer_fraction=settings.max_layer_fraction)
    inputs = FitInputs(model, tokenizer, options, harmful, harmless, harmful_val, harmless_val, model_name=model_name)
    return select_refusal_direction(inputs, mean_difference, batch_size=settings.batch_size, search=settings.search)


def chosen_projections(model, tokenizer, vector: torch.Tensor, chosen: Candidate, harmful, harmless, chat, batch_size) -> dict:
    """Validation activations at the chosen position and layer, projected on the chosen unit direction (``chat``: the
    system prompt and ``thinking`` the prompts are formatted with)."""
    unit = vector / vector.norm()
    out = {}
    for name, records in (("harmful", harmful), ("harmless", harmless)):
        acts = capture(model, tokenizer, chat_texts(tokenizer, records, *chat), [chosen.layer], at_positions([chosen.position]),
                       batch_size)
        out[name] = [round(float(v), 4) for v in acts[:, 0, 0] @ unit]
    return out


WEAK_BYPASS = 0.5  # a chosen ablation should remove at least half of the validation refusal score


def weak_choice_warning(result: RefusalFit) -> str | None:
    """A warning when the chosen candidate's ablation leaves more than ``WEAK_BYPASS`` of the refusal score, naming
    the candidates of the table that lower it more (with why the filters dropped them)."""
    c, base = result.chosen, result.baseline["harmful_refusal_score"]
    if not base > 0 or c.bypass is None or c.bypass <= WEAK_BYPASS * base:
        return None
    better = sorted((r for r in result.table if r.bypass is not None and r.bypass < c.bypass), key=lambda r: r.bypass)[:3]
    text = (f"the chosen candidate lowers the validation refusal score only from {base:.3f} to {c.bypass:.3f} (it should "
            f"remove at least {WEAK_BYPASS:.0%} of it): the edit may barely change refusal; ")
    if not better:
        return text + "no candidate lowers it more: use more or cleaner prompts, or another --method"
    named = "; ".join(f"layer index {r.layer}, position {r.position}: {r.bypass:.3f}" + (f" ({r.reason})" if r.reason else "")
                      for r in better)
    return text + f"candidates that lower it more: {named} (why a filter dropped it in brackets: --position restricts the fit to one position, --max-kl relaxes the KL filter)"


def _contrast_fitted(result: RefusalFit, max_kl: float) -> Fitted:
    """What the CLI says about a selected candidate."""
    c, base = result.chosen, result.baseline["harmful_refusal_score"]
    warnings = []
    if c.status == "chosen_relaxed":
        warnings.append(f"no candidate kept harmless first-token KL ≤ {max_kl:g}; the lowest-bypass one was taken (KL {c.kl:.3f})")
    if weak := weak_choice_warning(result):
        warnings.append(weak)
    lines = [f"chose layer index {c.layer}, position {c.position}: refusal score {base:.3f} → {c.bypass:.3f} ablated, "
             f"induce {c.induce:.3f}, KL {c.kl:.4f}", selection_summary(result.table, result.baseline)]
    if result.file.basis is not None:
        lines.append(f"basis of rank {len(result.file.basis)} at that candidate: remove it with steerfold edit --subspace; "
                     "for inlp, --scale 2 reflects across the first probe's hyperplane")
    return Fitted(result.file, lines, warnings)


def fit_with(estimator: Estimator, inputs: FitInputs, weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> Fitted:
    """A contrast job: ``estimator`` at every candidate, then the selection; what to say about the result."""
    return _contrast_fitted(select_refusal_direction(inputs, estimator, weights, inputs.options.batch_size),
                            inputs.options.max_kl)


def fit_diff_in_means(inputs: FitInputs) -> Fitted:
    return fit_with(mean_difference, inputs)


def fit_pca(inputs: FitInputs) -> Fitted:
    return fit_with(partial(paired_pca, components=inputs.options.pca_components), inputs)


def fit_logistic(inputs: FitInputs) -> Fitted:
    return fit_with(partial(probe_direction, l2=inputs.options.l2), inputs)


def fit_inlp(inputs: FitInputs) -> Fitted:
    options = inputs.options
    return fit_with(partial(inlp_estimate, iterations=options.inlp_iterations, l2=options.l2), inputs)


def fit_ridge(inputs: FitInputs) -> Fitted:
    """Ridge mean difference; with a scorer, each training prompt is weighted by its response's refusal confidence."""
    inputs, options = inputs.with_validation_sets(), inputs.options
    weights = None
    if options.scorer is not None:
        scorer = SCORERS[options.scorer](options)
        confidence = [refusal_confidence(inputs.model, inputs.tokenizer, records, scorer, options.system, options.max_new_tokens,
                                         prompt_thinking(options)) for records in (inputs.harmful, inputs.harmless)]
        weights = (confidence_weights(confidence[0], refusing_side=True), confidence_weights(confidence[1], refusing_side=False))
    fitted = fit_with(partial(ridge_direction, ridge_lambda=options.ridge_lambda), inputs, weights)
    if weights is not None:
        rounded = {side: [round(float(w), 3) for w in ws] for side, ws in zip(("harmful", "harmless"), weights)}
        fitted.file.metadata["confidence_weights"] = json.dumps(rounded)
        fitted.lines.append(f"{options.scorer} scorer: mean weight {float(weights[0].mean()):.2f} on harmful prompts, "
                            f"{float(weights[1].mean()):.2f} on harmless ones")
    return fitted


# --- per-category and persona methods -------------------------------------------------------------------------


def fit_per_category(inputs: FitInputs) -> Fitted:
    """Per harm category: category mean − harmless mean at every layer index, at one position; a cosine report."""
    model, tokenizer, options = inputs.model, inputs.tokenizer, inputs.options
    layers = list(range(model.config.num_hidden_layers + 1))
    positions = read_positions(tokenizer, options, default=-1)
    harmful_acts, harmless_acts = (
        capture(model, tokenizer, chat_texts(tokenizer, records, options.system, prompt_thinking(options)), layers,
                at_positions(positions), options.batch_size)[:, :, 0]
        for records in (inputs.harmful, inputs.harmless)
    )
    directions = category_directions(harmful_acts, [r.category for r in inputs.harmful], harmless_acts)
    overall = harmful_acts.mean(dim=0) - harmless_acts.mean(dim=0)
    if options.orthogonalize != "none":
        harmless_mean = harmless_acts.mean(dim=0)
        overall = orthogonal_to(overall, harmless_mean)
        directions = {name: orthogonal_to(vectors, harmless_mean) for name, vectors in directions.items()}
    names = list(directions)
    similarity = category_similarity(directions)
    metadata = _provenance(inputs, position=str(positions[0]), categories=json.dumps(names),
                           harmful_hash=prompt_hash(inputs.harmful), harmless_hash=prompt_hash(inputs.harmless))
    report = similarity_markdown(names, similarity, f"Per-category directions of {inputs.model_name or 'the model'}")
    lines = [f"per-category directions for {', '.join(names)} at position {positions[0]}, layer indices 0..{len(layers) - 1}"]
    return Fitted(DirectionFile(directions=overall, metadata=metadata, categories=directions), lines, report=report)


def fit_persona_direction(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    persona: str | None,
    against: str | None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    model_name: str = "",
) -> DirectionFile:
    """Persona vector per layer: mean activation over the persona's responses minus the other's."""
    layers = list(range(model.config.num_hidden_layers + 1))
    vectors = persona_vector(model, tokenizer, records, persona, against, layers, max_new_tokens, batch_size)
    metadata = {
        "method": "persona_vector",
        "model": model_name,
        "persona": persona or "",
        "against": against or "",
        "positions": "response tokens",
        "prompts_hash": prompt_hash(records),
        "steerfold_version": VERSION,
        **placement_metadata(model),
    }
    return DirectionFile(directions=vectors, metadata=metadata)


def fit_persona_vector(inputs: FitInputs) -> Fitted:
    """The persona vector; orthogonalised against the mean response activation on harmless prompts if asked."""
    model, tokenizer, options = inputs.model, inputs.tokenizer, inputs.options
    file = fit_persona_direction(model, tokenizer, inputs.prompts, options.persona, options.against,
                                 options.max_new_tokens, options.batch_size, model_name=inputs.model_name)
    assert file.directions is not None
    directions = file.directions
    if options.orthogonalize != "none":
        layers = list(range(model.config.num_hidden_layers + 1))
        harmless_mean = response_means(model, tokenizer, inputs.harmless, options.against, layers, options.max_new_tokens)
        directions = orthogonal_to(directions, harmless_mean)
    metadata = {**file.metadata, "options": json.dumps(options.model_dump(), sort_keys=True)}
    lines = [f"persona directions for layer indices 0..{directions.shape[0] - 1}"]
    return Fitted(DirectionFile(directions=directions, metadata=metadata), lines)

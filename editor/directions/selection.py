"""Choosing the refusal direction among (position, layer) candidates, the selection of Arditi et al. (2024).

Scores use the refusal score of Arditi et al.: the probability that the first response token is one that opens
a refusal (the set of first tokens of the base model's own refusals on the validation harmful prompts). For each
candidate difference-in-means vector r:

- bypass score: mean refusal-token probability on validation harmful prompts with r ablated everywhere;
- induce score: mean refusal-token probability on validation harmless prompts with r added at its layer;
- KL: first-token KL(base ‖ ablated) on validation harmless prompts.

Candidates in the last ``1 - max_layer_fraction`` of layers, those whose ablation moves harmless behaviour by more
than ``max_kl``, and those whose addition does not raise the refusal score above the base's are filtered out; the
lowest bypass score wins (ties: lower KL). No generation: the chosen direction is then checked by generation in
validation. The whole table is kept for the file and report, each row with its ``status``.

Three searches give the same winner (``SelectionSettings.search``):

- ``exhaustive``: every candidate the rule can choose gets three forward passes from the embedding, the edit applied
  by hooks, as the definition above reads (the reference the others are tested against);
- ``complete``: every such candidate scored in full (the exhaustive table) with cheaper passes: the prompts' shared
  prefix (chat template, system prompt) is computed once per pass (``steerfold.activations.capture.PromptBatches``),
  only the last position's logits are computed, and the steered pass starts from the base model's residual stream
  at the candidate's layer (recorded once) instead of from the embedding, running only the blocks after it;
- ``pruned`` (the default): the same passes, but a candidate is scored only while it can still win. Every candidate
  is first scored on the 8 harmful prompts the base model refuses most; then, in order of that partial bypass,
  each gets its remaining harmful prompts in batches, and is dropped (``outranked``) as soon as the refusal
  probability summed so far, over all prompts (a lower bound of its bypass, probabilities being ≥ 0), exceeds the
  bypass of a candidate that already passed every filter; the others get their induce score, and their KL if
  they pass the induce filter. A dropped candidate's bypass is provably above the winner's, so the winner is the
  one the exhaustive search picks (up to float rounding of the scores, about 1e-6).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.activations.capture import (
    PromptBatches, last_logits, prompt_batches, recording, resumed, text_batches,
)
from steerfold.activations.generate import greedy_ids
from steerfold.edit.edits import Edit, ablation_edit, steering_edit
from steerfold.edit.hooks import runtime_hooks
from steerfold.errors import SteerfoldError
from steerfold.models.loading import input_device
from steerfold.progress import progress, step
from steerfold.prompts import PromptRecord, Thinking
from steerfold.validation.behaviour import chat_texts
from steerfold.validation.divergence import kl, last_position_logits, runner
from steerfold.validation.refusal import is_refusal

# chosen: the winner; chosen_relaxed: the winner once the KL filter was relaxed (no candidate met it); kept: passed
# every filter, not the winner; filtered: scored, dropped by a filter (``reason`` says which); outranked: scoring
# stopped once its bypass was known to exceed a kept candidate's; not_scored: the rule cannot choose it.
Status = Literal["chosen", "chosen_relaxed", "kept", "filtered", "outranked", "not_scored"]
Search = Literal["pruned", "complete", "exhaustive"]
SEARCHES: tuple[str, ...] = ("pruned", "complete", "exhaustive")

SCREEN_PROMPTS = 8  # harmful prompts every candidate is scored on before the pruned search orders them
BOUND_SLACK = 1e-6  # a bound must beat the kept bypass by this much to drop a candidate (float rounding)


@dataclass
class Candidate:
    """One row of the selection table. Before ``choose`` a row that was scored has status ``kept``."""

    position: int
    layer: int
    bypass: float | None  # refusal score on harmful prompts, direction ablated (None: not computed)
    induce: float | None  # refusal score on harmless prompts, direction added at its layer
    kl: float | None
    norm: float
    status: Status = "kept"
    reason: str = ""  # why it was filtered, outranked or not scored, in words
    bypass_at_least: float | None = None  # outranked before all harmful prompts were scored: a lower bound of bypass

    @property
    def kept(self) -> bool:
        """Whether it passed every filter (the winner too, unless the KL filter had to be relaxed)."""
        return self.status in ("kept", "chosen")

    def as_dict(self) -> dict:
        """The row as stored in a direction file and report (``kept`` and ``reason`` as before ``status`` was added)."""
        row = asdict(self)
        status = row.pop("status")
        return {**row, "kept": self.kept, "reason": self.reason, "status": status}


@dataclass(frozen=True)
class SelectionSettings:
    """Filters, scoring budget and search of the selection."""

    max_layer_fraction: float = 0.8
    max_kl: float = 0.1
    batch_size: int = 32
    search: Search = "pruned"

    def __post_init__(self):
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, not {self.search!r}")

    def choosable(self, layer: int, num_layers: int) -> bool:
        """Whether the layer filter lets a candidate at ``layer`` be chosen."""
        return layer < self.max_layer_fraction * num_layers


@torch.no_grad()
def refusal_first_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, harmful: Sequence[PromptRecord], system: str | None = None,
    batch_size: int = 32, thinking: Thinking = None,
) -> list[int]:
    """Ids of the first generated token of the base model's own refusals of ``harmful`` (greedy, marker-detected)."""
    first: set[int] = set()
    batches = text_batches(tokenizer, chat_texts(tokenizer, harmful, system, thinking), batch_size, torch.device("cpu"))
    for inputs, _ in progress(batches, "generating the base model's refusals", total=-(-len(harmful) // batch_size), unit="batch"):
        for row in greedy_ids(model, tokenizer, inputs, max_new_tokens=8):
            if is_refusal(tokenizer.decode(row, skip_special_tokens=True)):
                first.add(int(row[0]))
    if not first:
        raise SteerfoldError(
            "the model refuses none of the validation harmful prompts: there is no refusal to remove "
            "(check --system and the chat template, or use prompts it refuses)"
        )
    return sorted(first)


def refusal_probability(logits: torch.Tensor, refusal_tokens: list[int]) -> torch.Tensor:
    """Probability mass of the refusal tokens at the first response position, per prompt."""
    return logits[:, -1].softmax(-1)[:, refusal_tokens].sum(-1)


def score_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    diffs: torch.Tensor,
    positions: list[int],
    layers: list[int],
    harmful: Sequence[PromptRecord],
    harmless: Sequence[PromptRecord],
    settings: SelectionSettings = SelectionSettings(),
    system: str | None = None,
    thinking: Thinking = None,
) -> tuple[list[Candidate], dict]:
    """The selection table of the candidates ``diffs[p, i]`` (position ``positions[p]``, layer index ``layers[i]``)
    with the scores ``settings.search`` computes on prompts formatted with ``system`` and ``thinking``, and the base
    scores they are compared with.

    Candidates the layer filter drops and zero differences are ``not_scored`` rows; in a pruned search, candidates
    that cannot win are ``outranked`` rows with the scores computed before that was known.
    """
    num_layers = model.config.num_hidden_layers
    table: list[Candidate] = []
    scorable: list[tuple[Candidate, torch.Tensor]] = []
    for p, position in enumerate(positions):
        for i, layer in enumerate(layers):
            vector = diffs[p, i]
            finite = bool(torch.isfinite(vector).all())
            row = Candidate(position, layer, None, None, None, float(vector.norm()) if finite else 0.0)
            if not settings.choosable(layer, num_layers):
                row.status, row.reason = "not_scored", f"layer ≥ {settings.max_layer_fraction:g}·L: the rule cannot choose it"
            elif not finite or vector.norm() == 0:
                row.status, row.reason, row.norm = "not_scored", "zero difference", 0.0
            else:
                scorable.append((row, vector))
            table.append(row)
    refusal_tokens = refusal_first_tokens(model, tokenizer, harmful, system, settings.batch_size, thinking)
    harmful_texts, harmless_texts = (chat_texts(tokenizer, records, system, thinking) for records in (harmful, harmless))
    if settings.search == "exhaustive":
        baseline = _score_exhaustive(model, tokenizer, scorable, refusal_tokens, harmful_texts, harmless_texts, settings)
    else:
        scorer = _FastScorer(model, tokenizer, refusal_tokens, harmful_texts, harmless_texts, settings,
                             sorted({row.layer for row, _ in scorable}))
        baseline = scorer.score(scorable, prune=settings.search == "pruned")
    baseline["refusal_tokens"] = tokenizer.convert_ids_to_tokens(refusal_tokens)
    baseline["search"] = settings.search
    return table, baseline


# --- the exhaustive search: three forward passes per candidate, edits by hooks ------------------------------------


def _score_exhaustive(model, tokenizer, scorable, refusal_tokens, harmful_texts, harmless_texts, settings) -> dict:
    all_layers = range(model.config.num_hidden_layers + 1)
    with step("scoring the base model on the validation prompts"):
        base_harmful = last_position_logits(runner(model), tokenizer, harmful_texts, settings.batch_size)
        base_harmless = last_position_logits(runner(model), tokenizer, harmless_texts, settings.batch_size)
    for row, vector in progress(scorable, "scoring candidate directions (exhaustive)", unit="candidate"):
        ablated = runner(model, ablation_edit(vector, all_layers))
        added = runner(model, steering_edit(vector, [row.layer]))
        bypass = refusal_probability(last_position_logits(ablated, tokenizer, harmful_texts, settings.batch_size), refusal_tokens)
        ablated_harmless = last_position_logits(ablated, tokenizer, harmless_texts, settings.batch_size)
        induce = refusal_probability(last_position_logits(added, tokenizer, harmless_texts, settings.batch_size), refusal_tokens)
        row.bypass, row.induce = float(bypass.mean()), float(induce.mean())
        row.kl = float(kl(base_harmless[:, -1], ablated_harmless[:, -1]).mean())
    return {
        "harmful_refusal_score": float(refusal_probability(base_harmful, refusal_tokens).mean()),
        "harmless_refusal_score": float(refusal_probability(base_harmless, refusal_tokens).mean()),
    }


# --- the complete and pruned searches ----------------------------------------------------------------------------


class _FastScorer:
    """The passes of the complete and pruned searches (see the module docstring)."""

    def __init__(self, model, tokenizer, refusal_tokens, harmful_texts, harmless_texts, settings, layers):
        self.model, self.settings, self.refusal_tokens = model, settings, refusal_tokens
        self.device = input_device(model)
        self.dtype = next(model.parameters()).dtype
        self.num_layers = model.config.num_hidden_layers
        self.all_layers = range(self.num_layers + 1)
        bs = settings.batch_size
        self.harmless = prompt_batches(tokenizer, harmless_texts, bs)
        by_length = prompt_batches(tokenizer, harmful_texts, bs)
        resumable = [layer for layer in layers if layer < self.num_layers]
        with step("scoring the base model on the validation prompts"), torch.no_grad():
            base_harmful = by_length.gather(self._pass(by_length))
            # the harmless prompts' residual stream at every candidate layer, where the steered passes start
            self.stash: list[dict[int, torch.Tensor]] = []
            self.base_harmless: list[torch.Tensor] = []
            cache = self.harmless.prefix_cache(model)
            for batch in self.harmless.batches:
                with recording(model, resumable) as seen:
                    self.base_harmless.append(last_logits(model, self.harmless.inputs(batch, cache, self.device)))
                self.stash.append(dict(seen))
        base_harmful_p = refusal_probability(base_harmful.unsqueeze(1), refusal_tokens)
        base_harmless_p = refusal_probability(self.harmless.gather(self.base_harmless).unsqueeze(1), refusal_tokens)
        # the bound grows fastest on the prompts the base model refuses most: they come first
        order = sorted(range(len(harmful_texts)), key=lambda i: (-float(base_harmful_p[i]), i))
        self.harmful = prompt_batches(tokenizer, harmful_texts, bs, order=order, sizes=(min(SCREEN_PROMPTS, bs), min(2 * SCREEN_PROMPTS, bs)))
        self.baseline = {"harmful_refusal_score": float(base_harmful_p.mean()),
                         "harmless_refusal_score": float(base_harmless_p.mean())}

    def _pass(self, plan: PromptBatches, batches=None, cache=None) -> list[torch.Tensor]:
        """Last-position logits of ``batches`` (default: all) of ``plan`` under whatever hooks are active."""
        cache = plan.prefix_cache(self.model) if cache is None else cache
        return [last_logits(self.model, plan.inputs(batch, cache, self.device))
                for batch in (plan.batches if batches is None else batches)]

    def _refusal_sum(self, logits: torch.Tensor) -> float:
        return float(refusal_probability(logits.unsqueeze(1), self.refusal_tokens).double().sum())

    @torch.no_grad()
    def score(self, scorable: list[tuple[Candidate, torch.Tensor]], prune: bool) -> dict:
        n_harmful, n_harmless = self.harmful.count, self.harmless.count
        states = [_Pending(row, vector, ablation_edit(vector, self.all_layers)) for row, vector in scorable]
        if prune and states:
            screened = len(self.harmful.batches[0].rows)
            for state in progress(states, f"screening candidates on {screened} harmful prompts", unit="candidate"):
                self._bypass_batch(state)
            states.sort(key=lambda s: s.harmful_sum)  # stable: grid order among ties
        best: Candidate | None = None  # the lowest (bypass, KL) that passed every filter so far
        min_induce, max_kl = self.baseline["harmless_refusal_score"], self.settings.max_kl
        label = "scoring candidates, dropping those that cannot win" if prune else "scoring every candidate"
        for state in progress(states, label, unit="candidate"):
            row = state.row
            beaten = lambda: prune and best is not None and state.harmful_sum / n_harmful > best.bypass + BOUND_SLACK
            while state.batches_done < len(self.harmful.batches) and not beaten():
                self._bypass_batch(state)
            if beaten():
                self._outranked(state, best)
                continue
            row.bypass = state.harmful_sum / n_harmful
            row.induce = self._induce(state) / n_harmless
            if prune and row.induce <= min_induce:
                continue  # the induce filter drops it (choose says so); its KL cannot matter
            row.kl = self._kl(state) / n_harmless
            if row.kl <= max_kl and (best is None or (row.bypass, row.kl) < (best.bypass, best.kl)):
                best = row
        return dict(self.baseline)

    def _outranked(self, state: "_Pending", best: Candidate) -> None:
        """Mark a candidate whose bypass (or a lower bound of it) is above ``best``'s."""
        row, n = state.row, self.harmful.count
        done = sum(len(batch.rows) for batch in self.harmful.batches[: state.batches_done])
        if done == n:
            row.bypass = state.harmful_sum / n
            known = f"its bypass {row.bypass:.4f}"
        else:
            row.bypass_at_least = state.harmful_sum / n
            known = f"its bypass is at least {row.bypass_at_least:.4f} ({done} of {n} prompts)"
        row.status = "outranked"
        row.reason = (f"outranked: {known}, above {best.bypass:.4f} of layer index {best.layer}, position {best.position}, "
                      "which passed every filter")

    def _bypass_batch(self, state: "_Pending") -> None:
        """Score the candidate's next batch of harmful prompts, ablated."""
        with runtime_hooks(self.model, state.ablation):
            if state.prefix is None:
                state.prefix = self.harmful.prefix_cache(self.model)
            batch = self.harmful.batches[state.batches_done]
            state.harmful_sum += self._refusal_sum(self._pass(self.harmful, [batch], state.prefix)[0])
        state.batches_done += 1

    def _induce(self, state: "_Pending") -> float:
        """Summed refusal probability on the harmless prompts with the vector added at its layer, from the recorded
        residual stream there."""
        layer, vector = state.row.layer, state.vector.to(self.device, torch.float32)
        steer = steering_edit(state.vector, [layer])
        if layer >= self.num_layers:  # the last residual stream: nothing to skip
            with runtime_hooks(self.model, steer):
                return sum(self._refusal_sum(logits) for logits in self._pass(self.harmless))
        with runtime_hooks(self.model, steer):
            cache = self.harmless.prefix_cache(self.model)  # the prefix, steered, from the embedding (one row)
        total = 0.0
        with resumed(self.model, layer) as start:
            for batch, stash in zip(self.harmless.batches, self.stash):
                start.hidden = (stash[layer].to(torch.float32) + vector).to(self.dtype)
                total += self._refusal_sum(last_logits(self.model, self.harmless.inputs(batch, cache, self.device)))
        return total

    def _kl(self, state: "_Pending") -> float:
        """Summed first-token KL(base ‖ ablated) on the harmless prompts."""
        with runtime_hooks(self.model, state.ablation):
            same_prefix = torch.equal(self.harmless.prefix, self.harmful.prefix) and state.prefix is not None
            ablated = self._pass(self.harmless, cache=state.prefix if same_prefix else None)
        return sum(float(kl(base, edited).double().sum()) for base, edited in zip(self.base_harmless, ablated))


@dataclass
class _Pending:
    """A candidate being scored by the fast searches: its ablation and its bypass so far."""

    row: Candidate
    vector: torch.Tensor
    ablation: Edit
    harmful_sum: float = 0.0  # refusal probability summed over the harmful prompts scored so far
    batches_done: int = 0
    prefix: object = None  # the ablated model's cache of the shared prefix


# --- the rule ----------------------------------------------------------------------------------------------------


def choose(
    table: list[Candidate], num_layers: int, settings: SelectionSettings = SelectionSettings(), min_induce: float = 0.0
) -> Candidate:
    """Apply the filters (``min_induce``: the base's harmless refusal score) to the scored rows, set each one's
    status, return the winner. Rows already ``not_scored`` or ``outranked`` are left as they are."""
    only_kl: list[Candidate] = []
    for row in table:
        if row.status in ("not_scored", "outranked"):
            continue
        failures = []
        if not settings.choosable(row.layer, num_layers):
            failures.append(f"layer ≥ {settings.max_layer_fraction:g}·L")
        if row.kl is not None and row.kl > settings.max_kl:
            failures.append(f"KL {row.kl:.3f} > {settings.max_kl:g}")
        if row.induce is not None and row.induce <= min_induce:
            failures.append("adding it does not raise the refusal score")
        missing = [name for name, value in (("bypass", row.bypass), ("induce", row.induce), ("KL", row.kl)) if value is None]
        if missing and not failures:
            row.status, row.reason = "not_scored", f"{', '.join(missing)} not computed"
            continue
        if failures and missing:
            failures.append(f"{', '.join(missing)} not computed")
        row.status, row.reason = ("filtered" if failures else "kept"), "; ".join(failures)
        if len(failures) == 1 and failures[0].startswith("KL"):
            only_kl.append(row)
    kept = [row for row in table if row.status == "kept"]
    if not kept:  # relax the KL filter alone, and say so, rather than stop with nothing
        if not only_kl:
            raise SteerfoldError(
                "no candidate direction passed the filters (see the table in the report): "
                "use more or cleaner prompts, or relax --max-kl"
            )
        best = min(only_kl, key=lambda row: (row.bypass, row.kl))
        best.status = "chosen_relaxed"
        best.reason = f"chosen (no candidate met KL ≤ {settings.max_kl:g}: KL filter relaxed)"
        return best
    best = min(kept, key=lambda row: (row.bypass, row.kl))
    best.status, best.reason = "chosen", "chosen"
    return best


def selection_summary(table: list[Candidate], baseline: dict) -> str:
    """One line saying how many candidates were scored in full and why the others were not."""
    count = lambda *statuses: sum(row.status in statuses for row in table)
    full = sum(row.status not in ("not_scored", "outranked") and None not in (row.bypass, row.induce, row.kl) for row in table)
    scored = count("chosen", "chosen_relaxed", "kept", "filtered")
    parts = [f"{full} of {len(table)} candidates scored in full"]
    if scored > full:
        parts.append(f"{scored - full} dropped by the induce filter before their KL")
    if count("outranked"):
        parts.append(f"{count('outranked')} outranked (their bypass provably above the winner's)")
    if count("not_scored"):
        parts.append(f"{count('not_scored')} not scored (layer filter or zero difference)")
    return f"selection ({baseline.get('search', 'exhaustive')} search): " + ", ".join(parts)

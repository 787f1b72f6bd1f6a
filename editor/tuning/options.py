"""The options of a tune, written once: ``steerfold tune``'s flags and the recipe's ``tune:`` section are derived
from these fields (``editor/options.py``, docs/design.md). No torch here."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerfold.directions.methods.registry import METHODS, canonical
from steerfold.errors import BadInput
from steerfold.options import SurfaceName, Words, first_error_line, vocabulary

# Fitting methods a tune can search over: those that give one direction per candidate (a basis-only method is an
# edit of another kind; persona vectors read other prompts).
TUNABLE_METHODS = ("diff_in_means", "pca", "logistic", "ridge", "inlp")
Damage = Literal["first-token-kl", "multi-token-kl"]
Searched = Literal["search", "on", "off"]


class TuneOptions(BaseModel):
    """What a tune searches, how it measures a trial, and how it picks one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trials: Annotated[int, Field(ge=1), Words(
        "Trials to have in the search (raise it with --resume to add trials to a finished tune).", flag="--trials",
        recipe="tune.trials")] = 100
    startup_trials: Annotated[int, Field(ge=0), Words(
        "Trials sampled at random before the search models the results (TPE's start).", flag="--startup-trials",
        recipe="tune.startup_trials")] = 20
    seed: Annotated[int, Field(ge=0), Words("Seed of the search: the same seed gives the same trials.", flag="--seed",
                                            recipe="tune.seed")] = 0
    refusal: Annotated[Literal["probability", "markers"], Words(
        "Refusal objective on the harmful validation prompts: the probability that the first answer token opens one of "
        "the base model's own refusals (one forward pass; a margin, so it holds on unseen prompts), or the share of "
        "greedy answers with a refusal marker anywhere (generated: slower). The front and the pick are measured both ways.",
        flag="--refusal", recipe="tune.refusal")] = "probability"
    damage: Annotated[Damage, Words(
        "Damage objective on the harmless validation prompts: KL of the first response token, or mean KL along the base "
        "model's greedy continuation (16 tokens).", flag="--damage", recipe="tune.damage")] = "first-token-kl"
    max_new_tokens: Annotated[int, Field(gt=0), Words(
        "Tokens generated per harmful prompt where answers are read (--refusal markers, and the front and the pick); a "
        "refusal marker anywhere in them counts.",
        flag="--max-new-tokens", recipe="tune.max_new_tokens")] = 32
    methods: Annotated[str, Words(
        f"Fitting methods whose directions the search chooses among, comma-separated ({', '.join(TUNABLE_METHODS)}).",
        flag="--methods", recipe="tune.methods")] = "diff_in_means"
    orthogonalize: Annotated[Searched, Words(
        "Orthogonalise the direction against the training prompts' harmless mean activation: searched, always or never "
        "(default: never; it spares harmless prompts near that mean, so validation prompts like the training ones "
        "understate its damage on others: see the README).",
        flag="--orthogonalize", recipe="tune.orthogonalize")] = "off"
    norm_preserving: Annotated[Searched, Words(
        "Norm-preserving ablation (merged checkpoints only): searched, always or never.", flag="--norm-preserving",
        recipe="tune.norm_preserving")] = "search"
    position: Annotated[int | None, Field(lt=0), Words(
        "Post-instruction token whose directions are searched, as a negative offset (-1 = last); default: all of them.",
        flag="--position", recipe="tune.position")] = None
    max_refusal: Annotated[float, Field(ge=0, le=1), Words(
        "--pick auto: the lowest-damage trial whose validation refusal (the --refusal objective) is at most this.",
        flag="--max-refusal",
        recipe="tune.max_refusal")] = 0.03
    pick: Annotated[str, Words("Which trial is chosen: auto (see --max-refusal) or a trial number.", flag="--pick",
                               recipe="tune.pick")] = "auto"
    system: Annotated[str | None, Words("System prompt used for every request (default: none).", flag="--system",
                                        recipe="tune.system")] = None
    batch_size: Annotated[int, Field(gt=0), Words("Prompts per forward pass.", flag="--batch-size",
                                                  recipe="tune.batch_size")] = 32

    @field_validator("orthogonalize", "norm_preserving", mode="before")
    @classmethod
    def _yaml_switch(cls, value):
        """YAML reads a bare on/off as true/false: take them as the words."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: str) -> str:
        names = [canonical(name) for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in TUNABLE_METHODS]
        if unknown or not names:
            what = f"'{unknown[0]}' is not a method a tune can search" if unknown else "no method given"
            raise ValueError(f"{what}: choose among {', '.join(TUNABLE_METHODS)}")
        assert all(name in METHODS for name in names)
        return ",".join(dict.fromkeys(names))

    @field_validator("pick")
    @classmethod
    def _pick(cls, value: str) -> str:
        if value != "auto" and not value.isdigit():
            raise ValueError(f"'{value}' is neither auto nor a trial number: write e.g. auto or 17")
        return value

    def method_list(self) -> list[str]:
        return self.methods.split(",")

    def search_key(self) -> dict:
        """The options that define the search: a tune resumes only under the same ones (trials, pick and
        max_refusal may change)."""
        return self.model_dump(exclude={"trials", "pick", "max_refusal", "batch_size"})


def parse_tune_options(values: dict, surface: SurfaceName = "cli", source: str | None = None) -> TuneOptions:
    """``TuneOptions`` from the values a surface gave (None: not given); a bad value is one line in its words."""
    try:
        return TuneOptions.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise first_error_line(exc, vocabulary(TuneOptions, surface), source) from None


def unavailable_optuna() -> BadInput | None:
    """The error to raise when optuna, the search's engine (an optional extra), is not installed."""
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        return BadInput("steerfold tune searches with optuna, which is not installed: pip install 'steerfold[tune]' "
                        "(or pip install optuna)")
    return None

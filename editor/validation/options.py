"""The options of a validation, written once: ``steerfold validate``'s flags and the recipe's ``validate:`` section
(``ValidateSpec`` extends this model with its prompt-set names and thresholds) are derived from these fields
(``editor/options.py``, docs/design.md). No torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steerfold.errors import BadInput
from steerfold.options import SurfaceName, Words, first_error_line, vocabulary, words_of

DEFAULT_MAX_NEW_TOKENS = 128


class ValidateOptions(BaseModel):
    """How the edited model is measured against its base."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system: Annotated[str | None, Words("System prompt used for every request (default: none).", flag="--system",
                                        recipe="validate.system")] = None
    coherence: Annotated[Literal["none", "organism"], Words(
        "Check coherent compliance (the organism's answer template).", flag="--coherence",
        recipe="validate.coherence")] = "none"
    max_new_tokens: Annotated[int, Field(gt=0), Words(
        "Tokens generated per prompt (enough for a late refusal, or the answer after a reasoning block, to show).",
        flag="--max-new-tokens", recipe="validate.max_new_tokens")] = DEFAULT_MAX_NEW_TOKENS
    markers: Annotated[Path | None, Words(
        "More refusal markers, one a line, added to the shipped list (format: editor/validation/markers.txt; "
        "^phrase: only opening a sentence, !phrase: an idiom that is no refusal).", flag="--markers",
        recipe="validate.markers", metavar="FILE")] = None

    over_refusal: Annotated[str | None, Words(
        "Safe requests that only look unsafe (a jsonl, csv or txt prompt file; in a recipe, the name of a prompt set): "
        "their refusal rate, before and after, is reported as over-refusal (recipes/prompts/over_refusal.jsonl has 144).",
        flag="--over-refusal", recipe="validate.over_refusal", metavar="FILE")] = None

    thinking: Annotated[Literal["on", "off", "auto"], Words(
        "Reasoning models: on or off passes enable_thinking to a chat template that reads it (a template without the "
        "switch is refused); auto leaves the template's default. Verdicts read the answer after any reasoning block.",
        flag="--thinking", recipe="validate.thinking")] = "auto"
    judge: Annotated[str | None, Words(
        "A causal LM (local folder or Hub id) that reads each request and response and says refusal, compliance or "
        "evasion: a third level of evidence beside the markers, with its agreement with them and with steerfold's "
        "hand-labelled rows.", flag="--judge", recipe="validate.judge", metavar="MODEL")] = None
    judge_samples: Annotated[int, Field(ge=1), Words("With --judge: sampled verdicts per response; the most frequent wins.",
                                                      flag="--judge-samples", recipe="validate.judge_samples")] = 5
    judge_seed: Annotated[int, Words("With --judge: the seed of its sampled verdicts.", flag="--judge-seed",
                                     recipe="validate.judge_seed")] = 0

    def check(self, surface: SurfaceName = "cli") -> None:
        """Refuse judge settings without a judge, in the words of ``surface``."""
        if self.judge is None and (self.judge_samples != 5 or self.judge_seed != 0):
            vocab = vocabulary(ValidateOptions, surface)
            raise BadInput(f"{vocab['judge_samples']} and {vocab['judge_seed']} set the judge's votes: add "
                           f"{vocab['judge']} MODEL, or drop them")


def parse_validate_options(values: dict, surface: SurfaceName = "cli", source: str | None = None) -> ValidateOptions:
    """``ValidateOptions`` from the values a surface gave (None: not given); a bad value is one line in that
    surface's words."""
    try:
        options = ValidateOptions.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise first_error_line(exc, vocabulary(ValidateOptions, surface), source) from None
    options.check(surface)
    return options


def in_recipe_words(message: str) -> str:
    """A library message, which names ``steerfold validate``'s flags, in a recipe's keys (``--thinking`` →
    ``validate.thinking``)."""
    import re

    flags = {words_of(ValidateOptions, name).flag: words_of(ValidateOptions, name).recipe for name in ValidateOptions.model_fields}
    pattern = re.compile("|".join(re.escape(flag) for flag in sorted(flags, key=len, reverse=True)) + r"(?![\w-])")
    return pattern.sub(lambda m: flags[m.group(0)], message)


def thinking_switch(options: ValidateOptions) -> bool | None:
    """``enable_thinking`` for the chat template: True, False, or None (auto: the template's default)."""
    return {"on": True, "off": False, "auto": None}[options.thinking]


def load_markers(options: ValidateOptions, base: Path | None = None):
    """The shipped markers, plus the file ``markers`` names (relative to ``base``, a recipe's folder, when given)."""
    from steerfold.validation.refusal import DEFAULT_MARKERS, Markers

    if options.markers is None:
        return DEFAULT_MARKERS
    path = base / options.markers if base is not None and (base / options.markers).is_file() else options.markers
    return DEFAULT_MARKERS + Markers.read(path)

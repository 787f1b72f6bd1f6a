"""The options of a validation, written once: ``steerfold validate``'s flags and the recipe's ``validate:`` section
(``ValidateSpec`` extends this model with its prompt-set names and thresholds) are derived from these fields
(``editor/options.py``, docs/design.md). No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steerfold.errors import BadInput
from steerfold.options import SurfaceName, Words, first_error_line, vocabulary, words_of

DEFAULT_MAX_NEW_TOKENS = 128
SHIPPED_REFERENCE = Path(__file__).parent / "data" / "reference.txt"  # public domain: data/README.md


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
    perplexity_text: Annotated[str | None, Words(
        "A UTF-8 text whose perplexity under the base and the edited model is reported with its change (default: "
        "steerfold's public-domain reference text, about 4 KB of plain English); none: leave perplexity out.",
        flag="--perplexity-text", recipe="validate.perplexity_text", metavar="FILE|none")] = None
    lm_eval: Annotated[str | None, Words(
        "lm-evaluation-harness tasks, comma-separated (e.g. arc_easy,hellaswag), run on the base and the edited model; "
        "the report gives every metric and its change. Needs pip install lm-eval and the tasks' data.",
        flag="--lm-eval", recipe="validate.lm_eval", metavar="TASKS")] = None
    lm_eval_limit: Annotated[int | None, Field(gt=0), Words(
        "With --lm-eval: examples per task (default: all; a limit gives rougher figures, faster).",
        flag="--lm-eval-limit", recipe="validate.lm_eval_limit", metavar="N")] = None

    def check(self, surface: SurfaceName = "cli") -> None:
        """Refuse judge settings without a judge and lm-eval settings that cannot run (no task, or lm-eval not
        installed: refused before any model loads), in the words of ``surface``."""
        import importlib.util

        vocab = vocabulary(ValidateOptions, surface)
        if self.judge is None and (self.judge_samples != 5 or self.judge_seed != 0):
            raise BadInput(f"{vocab['judge_samples']} and {vocab['judge_seed']} set the judge's votes: add "
                           f"{vocab['judge']} MODEL, or drop them")
        if self.lm_eval is None and self.lm_eval_limit is not None:
            raise BadInput(f"{vocab['lm_eval_limit']} limits the lm-eval tasks: add {vocab['lm_eval']} TASKS, or drop it")
        if self.lm_eval is not None and not lm_eval_tasks(self):
            raise BadInput(f"{vocab['lm_eval']} names no task: give lm-evaluation-harness task names, e.g. arc_easy,hellaswag")
        if self.lm_eval is not None and importlib.util.find_spec("lm_eval") is None:
            raise BadInput(f"{vocab['lm_eval']} runs lm-evaluation-harness, which is not installed: pip install lm-eval "
                           f"(or drop {vocab['lm_eval']})")


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


def resolved(path: str | Path, base: Path | None = None) -> Path:
    """A file an option names: relative to ``base`` (a recipe's folder) when it is there, else as given."""
    return base / path if base is not None and (base / path).is_file() else Path(path)


def load_markers(options: ValidateOptions, base: Path | None = None):
    """The shipped markers, plus the file ``markers`` names (relative to ``base``, a recipe's folder, when given)."""
    from steerfold.validation.refusal import DEFAULT_MARKERS, Markers

    if options.markers is None:
        return DEFAULT_MARKERS
    return DEFAULT_MARKERS + Markers.read(resolved(options.markers, base))


def lm_eval_tasks(options: ValidateOptions) -> tuple[str, ...]:
    """The lm-evaluation-harness tasks ``lm_eval`` names (comma-separated), in order."""
    return tuple(task.strip() for task in (options.lm_eval or "").split(",") if task.strip())


@dataclass(frozen=True)
class ReferenceText:
    """A text whose perplexity is compared: ``name`` as the report shows it, and the text."""

    name: str
    text: str


@dataclass(frozen=True)
class DamageChecks:
    """Damage measured beyond KL and top-1 agreement: perplexity of ``reference`` (None: not measured) and the
    lm-evaluation-harness tasks run on both models (none: not run)."""

    reference: ReferenceText | None = None
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_limit: int | None = None


def damage_checks(options: ValidateOptions, base: Path | None = None) -> DamageChecks:
    """What ``options`` ask beyond KL, with the reference text read (relative to ``base``, a recipe's folder); an
    unreadable text is one line naming the option."""
    return DamageChecks(load_reference(options, base), lm_eval_tasks(options), options.lm_eval_limit)


def load_reference(options: ValidateOptions, base: Path | None = None) -> ReferenceText | None:
    """The text ``perplexity_text`` names: the shipped reference text by default, None for ``none``."""
    if options.perplexity_text == "none":
        return None
    path = SHIPPED_REFERENCE if options.perplexity_text is None else resolved(options.perplexity_text, base)
    name = "steerfold reference text" if options.perplexity_text is None else path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"--perplexity-text {path} does not exist: fix the path, or pass none to leave perplexity out") from None
    except (OSError, UnicodeDecodeError):
        raise BadInput(f"--perplexity-text {path} is not readable UTF-8 text: save it as UTF-8, or pass none") from None
    if not text.strip():
        raise BadInput(f"--perplexity-text {path} is empty: give it some prose, or pass none")
    return ReferenceText(name, text)

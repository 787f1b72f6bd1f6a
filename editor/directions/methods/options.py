"""Options of every fitting method, as one strict pydantic model shared by ``steerfold fit`` and recipes.

The CLI generates its ``fit`` flags from these fields (``--ridge-lambda`` for ``ridge_lambda``) and a recipe's
``fit:`` section extends the model with prompt-set names, so a default or a check is written once. No torch here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from steerfold.errors import BadInput
from steerfold.directions.methods.registry import METHODS, canonical, unknown_method

Orthogonalize = Literal["none", "harmless-mean"]
ScorerName = Literal["markers", "judge"]
AFTER_THINKING = "after-thinking"  # the position that reads where the answer begins, after a closed reasoning block


class FitOptions(BaseModel):
    """How to fit a direction; fields that a method does not read are ignored by it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(default="diff_in_means", description=f"Fitting method: {', '.join(METHODS)}")
    system: str | None = Field(default=None, description="System prompt used for every request (default: none)")
    position: int | Literal["after-thinking"] | None = Field(
        default=None,
        description="Tokens to read: one post-instruction token, as a negative offset (-1 = last), or after-thinking: "
                    "every prompt ends with an empty, closed reasoning block (<think></think>, for a thinking model's "
                    "template) and the tokens from its closing tag on are the candidates; default: every "
                    "post-instruction token (per_category: -1)")
    orthogonalize: Orthogonalize = Field(
        default="none", description="Project the direction orthogonal to the harmless prompts' mean activation")
    max_kl: float = Field(default=0.1, gt=0, description="Discard candidates whose ablation moves harmless first-token KL above this")
    max_layer_fraction: float = Field(default=0.8, gt=0, le=1, description="Consider only candidates below this fraction of the layers")
    persona: str | None = Field(default=None, description="Method persona_vector: the system prompt of the persona to fit")
    against: str | None = Field(default=None, description="Method persona_vector: the system prompt to contrast with (default: none)")
    ridge_lambda: float = Field(default=1.0, gt=0, description="Method ridge: λ, in units of the mean activation variance tr(Σ)/d")
    l2: float = Field(default=1e-3, ge=0, description="Methods logistic, inlp: L2 penalty on the probe weights (features at unit RMS)")
    inlp_iterations: int = Field(default=4, ge=1, description="Method inlp: probes fitted and projected out (rank of the basis)")
    pca_components: int = Field(default=1, ge=1, description="Method pca: principal components kept; above 1 they are stored as a basis (remove it with edit --subspace)")
    scorer: ScorerName | None = Field(
        default=None, description="Method ridge: weight each prompt by a refusal confidence of the model's own response")
    judge: str | None = Field(default=None, description="With scorer judge: a causal LM (folder or Hub id) that classifies responses")
    judge_samples: int = Field(default=5, ge=1, description="With scorer judge: sampled votes averaged per response")
    judge_seed: int = Field(default=0, description="With scorer judge: the seed of the sampled votes")
    judge_template: str | None = Field(
        default=None, description="With scorer judge: its prompt, with {prompt} and {response} (default: a refuse/comply question)")
    max_new_tokens: int = Field(default=32, gt=0, description="Length of the responses persona vectors average and scorers read")
    batch_size: int = Field(default=32, gt=0, description="Prompts per forward pass: lower it when a batch does not fit in (GPU) memory; "
                                                          "the direction does not depend on it beyond float rounding")

    @field_validator("method")
    @classmethod
    def known_method(cls, value: str) -> str:
        name = canonical(value)
        if name not in METHODS:
            raise ValueError(unknown_method(value))
        return name

    @field_validator("position", mode="before")
    @classmethod
    def offset_or_after_thinking(cls, value):
        if value is None or value == AFTER_THINKING:
            return value
        text = str(value).strip()
        if isinstance(value, bool) or not text.lstrip("-").isdigit() or int(text) >= 0:
            raise ValueError(f"give a negative offset (-1 = the last token) or {AFTER_THINKING}, not {value!r}")
        return int(text)

    @field_validator("judge_template")
    @classmethod
    def template_fields(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format(prompt="", response="")
            except (KeyError, IndexError, ValueError):
                raise ValueError("the judge template may use only {prompt} and {response} (double other braces)") from None
        return value

    @model_validator(mode="after")
    def scorer_fits_method(self) -> "FitOptions":
        if self.scorer is not None and self.method != "ridge":
            raise ValueError("scorer weights the means of the ridge method: set method ridge, or drop scorer")
        if (self.scorer == "judge") != (self.judge is not None):
            raise ValueError("scorer judge and judge MODEL go together: give both, or neither")
        return self


def parse_fit_options(values: dict) -> FitOptions:
    """FitOptions from CLI flag values; a bad value is one SteerfoldError line naming the flag."""
    try:
        return FitOptions.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_", "-") + ": " if error["loc"] else ""
        raise BadInput(flag + error["msg"].removeprefix("Value error, ")) from None

"""Which prompt tokens a fit reads (``FitOptions.position``): the chat template's tokens after the request (all of
them, or one negative offset), or, with ``after-thinking``, the tokens from the closing tag of an empty reasoning
block that every prompt of the fit then ends with (``<think>\\n\\n</think>\\n\\n`` after the generation prompt: where a
thinking model's answer begins). The same formatting holds for everything the fit reads (activations, the
selection's scores, a scorer's responses), and the direction file records the choice (``positions_read``)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from steerfold.activations.capture import after_thinking_positions, post_instruction_positions
from steerfold.directions.methods.options import AFTER_THINKING, FitOptions
from steerfold.errors import SteerfoldError
from steerfold.prompts import CLOSED, Thinking


def positions_read(options: FitOptions) -> str:
    """The kind of positions a fit reads, as its direction file records it: post-instruction or after-thinking."""
    return AFTER_THINKING if options.position == AFTER_THINKING else "post-instruction"


def prompt_thinking(options: FitOptions) -> Thinking:
    """How the fit's prompts are formatted (``format_chat``'s ``thinking``): with a closed reasoning block for
    after-thinking, else as the template does by default."""
    return CLOSED if options.position == AFTER_THINKING else None


def read_positions(tokenizer: PreTrainedTokenizerBase, options: FitOptions, default: int | None = None) -> list[int]:
    """The positions a fit reads: every after-thinking one (or ``default`` among them), or every post-instruction one,
    or the one ``options.position`` (else ``default``)."""
    if options.position == AFTER_THINKING:
        positions = after_thinking_positions(tokenizer, options.system)
        return positions if default is None else [default]
    positions = post_instruction_positions(tokenizer, options.system)
    wanted = options.position if options.position is not None else default
    if wanted is None:
        return positions
    if wanted not in positions:
        raise SteerfoldError(f"position {wanted} is not a post-instruction token of this chat template: "
                             f"choose one of {', '.join(map(str, positions))}")
    return [wanted]

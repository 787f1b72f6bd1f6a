"""Options written once: a pydantic field carries, beside its type and default, the words each surface uses for it
(the command-line flag, the recipe key) and its help, so the click options, the recipe schema, the messages and
the reproduce command are all read from the same field. No torch, no click here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ValidationError

from steerfold.errors import BadInput, SteerfoldError

SurfaceName = Literal["cli", "recipe"]


@dataclass(frozen=True)
class Words:
    """How a field is named on each surface and shown in ``--help``.

    ``flag``: the command-line option (``None``: not on the command line; a ``--no-…`` flag of a boolean field sets
    it to False); ``recipe``: the recipe key, e.g. ``edit.scale`` (``None``: not in a recipe); ``reproduce``: whether
    the reproduce command repeats it; ``kinds``: for a field that chooses between kinds, the flag that picks each
    (and ``kind_help`` the help of a flag that is no other field's)."""

    help: str
    flag: str | None = None
    recipe: str | None = None
    metavar: str | None = None
    reproduce: bool = True
    kinds: dict[str, str] = field(default_factory=dict)
    kind_help: dict[str, str] = field(default_factory=dict)  # the help of a kind's own switch (--subspace)

    def on(self, surface: SurfaceName) -> str | None:
        return self.flag if surface == "cli" else self.recipe


def words_of(model: type[BaseModel], name: str) -> Words:
    """The ``Words`` attached to a field (``Annotated[T, Words(...)]``)."""
    found = [m for m in model.model_fields[name].metadata if isinstance(m, Words)]
    if not found:
        raise KeyError(f"{model.__name__}.{name} has no Words")
    return found[0]


def vocabulary(model: type[BaseModel], surface: SurfaceName) -> dict[str, str]:
    """Every field's name on ``surface`` (a field that only picks kinds: its kinds' flags; the field name where the
    surface has none), plus ``kind_X`` for the word that picks kind X: the template keys of the model's messages."""
    vocab: dict[str, str] = {}
    for name in model.model_fields:
        words = words_of(model, name)
        vocab[name] = words.on(surface) or "/".join(words.kinds.values()) or name
        for kind, flag in words.kinds.items():
            vocab[f"kind_{kind}"] = flag if surface == "cli" else f"{words.recipe}: {kind}"
    return vocab


def first_error_line(exc: ValidationError, vocab: dict[str, str], source: str | None = None) -> SteerfoldError:
    """A pydantic error as one line naming the option in the user's words (and how many more errors there are)."""
    errors = exc.errors()
    error = errors[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    message = error["msg"].removeprefix("Value error, ")
    # "--mlp-kernel '1,2' is not …" when the message starts with the value, else "--layer: Input should be …"
    where = f"{vocab.get(name, name)}{' ' if message.startswith(chr(39)) else ': '}" if name else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return BadInput(f"{source + ': ' if source else ''}{where}{message}{more}")

"""steerfold's errors: one base class, whose message is a single line naming the problem and the fix, and a
subclass per kind of problem, so that callers of the library can tell them apart (the CLI prints any of them and
exits with code 2)."""


class SteerfoldError(Exception):
    """Bad input: one line naming the problem and the fix (the CLI prints it and exits with code 2)."""


class UnsupportedModel(SteerfoldError):
    """The model's architecture is not in steerfold's table (``editor.models.arch``)."""


class CannotCarry(SteerfoldError):
    """The chosen artifact format cannot carry the edit exactly (``editor.artifacts.formats``)."""


class OutputRefused(SteerfoldError):
    """The output path breaks the rule for writing outputs, or cannot be written (``editor.artifacts.outputs``)."""

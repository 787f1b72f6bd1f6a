"""steerfold's errors: one base class, whose message is a single line naming the problem and the fix in the words
the user typed (a flag, or a recipe key), and a subclass per kind of problem, so that callers of the library can
tell them apart. The CLI prints any of them as one line and exits with code 2 (``editor.endings``)."""


class SteerfoldError(Exception):
    """A problem the user can fix: one line naming it and the fix."""


class BadInput(SteerfoldError):
    """A value, option, prompt file, direction file or checkpoint the user gave is wrong or does not fit."""


class UnsupportedModel(SteerfoldError):
    """The model's architecture is not in steerfold's table (``editor.models.arch``)."""


class UnsupportedQuantization(SteerfoldError):
    """The checkpoint's weights are stored in a quantized format steerfold cannot edit (``editor.models.quantization``)."""


class CannotCarry(SteerfoldError):
    """The chosen artifact format cannot carry the edit exactly (``editor.artifacts.formats``)."""


class OutputRefused(SteerfoldError):
    """The output path breaks the rule for writing outputs, or cannot be written (``editor.artifacts.outputs``)."""


class IOFailure(SteerfoldError):
    """A file could not be read or written (permissions, a full disk), or the Hub could not be reached."""

"""The one exception type for bad input: its message is a single line naming the problem and the fix."""


class SteerfoldError(Exception):
    """Bad input: one line naming the problem and the fix (the CLI prints it and exits with code 2)."""

"""The one exception type for bad input."""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad user input: a one-line message naming the file and the field.

    The command line prints `error: <message>` and exits with status 2, writing nothing.
    """

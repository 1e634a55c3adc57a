"""`InputError`, re-exported from the bottom layer (`atomicspi._errors`) where it is defined."""

from .._errors import InputError as InputError

__all__ = ["InputError"]

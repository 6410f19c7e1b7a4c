"""Errors the user can act on.

Every error that comes from bad input (a missing file, a wrong layer, a study file we refuse)
is an ``InputError``: the CLI prints its message as one line and exits with status 2, so a
user never sees a traceback for a mistake they can fix.
"""


class InputError(Exception):
    """Bad input or a refused file; the message is one actionable line."""


class StudyFileError(InputError):
    """A study file that is missing, corrupted, of an unknown schema, or from another config."""

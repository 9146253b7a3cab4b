"""Errors a user can act on: each becomes one line on stderr and exit code 2, never a traceback.

Raise `ConfigError` for a bad config value, `InputError` for a bad file, model, suite or URI.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in what the user gave us; the message says what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(UserError):
    """A config value that cannot work."""


class InputError(UserError):
    """A model, checkpoint, suite, data file, path or tracking URI that cannot be used."""

"""Errors a user can act on: each becomes one line on stderr and exit code 2, never a traceback.

Raise `ConfigError` for a bad config value, `InputError` for a bad file, model, suite or URI.
Everything else is a stage or library failure (exit 3, pipelines/exit_codes.py): one line, its
traceback in the run's log.
"""


class UserError(Exception):
    """A problem in what the user gave us; the message says what is wrong and how to fix it."""


class ConfigError(UserError):
    """A config value that cannot work."""


class InputError(UserError):
    """A model, checkpoint, suite, data file, path or tracking URI that cannot be used."""


def first_line(error: BaseException) -> str:
    """Hydra wraps the useful reason (e.g. "Key 'bogus' not in 'QuantConfig'") as the cause."""
    lines = []
    while error is not None:
        text = str(error).strip()
        lines.append(next((part for part in text.splitlines() if part.strip()), type(error).__name__))
        error = error.__cause__
    return ": ".join(line.rstrip(".").replace("\t", " ") for line in lines)


def failure_line(error: BaseException) -> str:
    """`Type: first line of the message`, as a failed stage's record and the CLI's last line say it."""
    return f"{type(error).__name__}: {first_line(error)}"

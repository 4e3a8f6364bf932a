"""The errors that explain themselves, at the bottom of the project: anything may raise them, and
every command prints them as one paragraph (command_line.run_command) instead of a traceback.

Each message says what is wrong and what to do about it.
"""


class ExplainedError(Exception):
    """A problem the user can fix; the message says what it is and how."""


class ConfigError(ExplainedError):
    """A hyperparameter or a command-line argument is unknown or invalid."""


class DataError(ExplainedError, ValueError):
    """The data could not be loaded (a ValueError too, as the data checks raise it for values)."""


class RunError(ExplainedError):
    """A run folder cannot be used."""


def require(condition, message, error=ConfigError):
    """Raise error(message) unless condition holds; for range checks."""
    if not condition:
        raise error(message)

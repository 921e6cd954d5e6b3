"""User-facing errors: one clear sentence that says what is wrong and how to fix it.

The CLI prints a `WenzhenError` as that sentence and exits non-zero; anything else is a bug and keeps its traceback.
"""


class WenzhenError(Exception):
    """An error caused by the user's input or environment, with the fix in its message."""


class ConfigError(WenzhenError):
    """A configuration file or option that failed validation."""

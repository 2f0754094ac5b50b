"""The one exception type that turns bad user input into a single clear line (exit status 2)."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input, found before any model weights are loaded.

    The message always names the config key, the value given and what is allowed, so the CLI can
    print it as one line and exit with status 2 without a traceback.
    """

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")

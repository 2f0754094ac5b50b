"""The exceptions that end a run with one clear line: bad user input (exit status 2) and a diverged
training (exit status 1)."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input, found before any model weights are loaded.

    The message always names the config key, the value given and what is allowed, so the CLI can
    print it as one line and exit with status 2 without a traceback.
    """

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


class Diverged(RuntimeError):
    """Training went non-finite and cannot go on: the run stops with one line (exit status 1) and
    no result; the checkpoint on disk is the last good one (nothing is saved after the bad steps)."""

    def __init__(self, stage: str, step: int | None, what: str):
        self.stage, self.step, self.what = stage, step, what
        where = f"stage {stage}" if step is None else f"stage {stage} at step {step}"
        super().__init__(f"diverged in {where}: {what}")

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


class DataError(ConfigError):
    """A data or model file that cannot be used as it is (bad bytes, an answer span that is not in
    its context, weights that do not match their config): the one line names the key the user
    typed, the file and the row, so the file can be fixed without a debugger."""

    def __init__(self, key: str, value: object, path: object, where: str | None, what: str):
        self.path, self.where = str(path), where  # where: "line 12", "question 7 (id 5733be28...)"
        super().__init__(key, value, f"{path}{'' if where is None else ', ' + where}: {what}")


class Diverged(RuntimeError):
    """Training went non-finite and cannot go on: the run stops with one line (exit status 1) and
    no result; the checkpoint on disk is the last good one (nothing is saved after the bad steps)."""

    def __init__(self, stage: str, step: int | None, what: str):
        self.stage, self.step, self.what = stage, step, what
        where = f"stage {stage}" if step is None else f"stage {stage} at step {step}"
        super().__init__(f"diverged in {where}: {what}")


def warn(message: str) -> None:
    """One line on stderr, in the CLI's own voice (the run goes on)."""
    import sys

    print(f"prune-run: warning: {message}", file=sys.stderr)

"""Errors that end a run with a message for the user (the CLI prints them without a traceback)."""


class NonFiniteLossError(RuntimeError):
    """A loss or metric became NaN/inf; the run stops and names the step and the metric."""


class UserError(Exception):
    """A failure the user can fix (exit code 2): the message names the file / key and the fix."""


class PreflightError(UserError):
    """A check before work starts failed: a model, tokenizer, output directory or data path."""


class OutputInUseError(UserError):
    """Another run holds ``--out`` (its lock file names the process), or ``--out`` holds a run
    that neither ``--resume`` nor ``--overwrite`` was given for."""


class CheckpointError(UserError):
    """A checkpoint could not be written (the previous one is kept) or none could be read."""

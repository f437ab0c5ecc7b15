"""User-facing errors: each carries one line that names the file or setting and the problem.

The CLI prints ``error: <message>`` and exits with the class's ``exit_code``; no traceback
unless ``--debug``.
"""

from __future__ import annotations


class Adapt3dError(Exception):
    """Base class of every problem a user can fix (bad file, bad setting, bad argument)."""

    exit_code = 1


class InputError(Adapt3dError):
    """An input file or dataset is missing, unreadable or inconsistent."""

    exit_code = 3


class CheckpointError(Adapt3dError):
    """A checkpoint or adapter cannot be loaded safely or does not match the model."""

    exit_code = 4


class ConfigError(Adapt3dError):
    """A configuration key, value or command-line option is invalid."""

    exit_code = 2


class OutputError(Adapt3dError):
    """An output location cannot be written."""

    exit_code = 5


class RunInterrupted(Adapt3dError):
    """A run was stopped (Ctrl-C) before it finished; its message says how to resume it."""

    exit_code = 130

"""The errors parabench shows the user as they are: one clear line, no traceback."""

from __future__ import annotations


class ParabenchError(Exception):
    """An error whose message is meant for the user as it is: one clear line, no traceback."""

    exit_code = 1


class ConfigError(ParabenchError):
    """A value given by the user (params.yaml, an option, a parameter) that is not allowed (exit 2: usage)."""

    exit_code = 2

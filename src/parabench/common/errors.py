"""The errors parabench shows the user as they are: one clear line, no traceback."""

from __future__ import annotations


class ParabenchError(Exception):
    """An error whose message is meant for the user as it is: one clear line, no traceback."""

    exit_code = 1


class ConfigError(ParabenchError):
    """A value given by the user (params.yaml, an option, a parameter) that is not allowed (exit 2: usage)."""

    exit_code = 2


def first_line(error: object) -> str:
    """The first line of an error message, for one-line reports."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def one_line(error: object) -> str:
    """An error message as the one line the user sees: its lines joined, spaces collapsed."""
    return " ".join(str(error).split()) or type(error).__name__

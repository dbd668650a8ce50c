"""The exception types whose message is meant for the user, and the one check for names from a fixed list.

The CLI prints an ``L2LZOError`` as a single line (no traceback) and exits with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Collection


class L2LZOError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(L2LZOError, ValueError):
    """A setting out of range or an unknown name: one line for the CLI, a ValueError for library callers."""


def check_choice(kind: str, value: str, choices: Collection[str]) -> None:
    """Raise ``ConfigError`` listing the choices unless ``value`` is one of them."""
    if value not in choices:
        raise ConfigError(f"unknown {kind} {value!r}: choose one of {', '.join(choices)}")

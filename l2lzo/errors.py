"""The one exception type whose message is meant for the user.

The CLI prints an ``L2LZOError`` as a single line (no traceback) and exits with status 2;
anything else is a bug and keeps its traceback.
"""


class L2LZOError(Exception):
    """A problem with the user's input or environment, explained in one line."""

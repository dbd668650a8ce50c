"""``python -m service [--host H] [--port P] [--registry ROOT] [--token-file PATH]``: the same as ``l2lzo serve``.

For containers and benchmarks that run the service without the rest of l2lzo (no torch import).
"""

import argparse
import sys

from registry.errors import RegistryError
from service.cli import add_arguments


def main(argv: list[str] | None = None) -> int:
    """Run the server; a user error prints one line and returns 2."""
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve an l2lzo policy registry over HTTP.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except RegistryError as exc:
        print(f"l2lzo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``l2lzo serve``: run the policy service with uvicorn.

``register(subparsers)`` adds the command to an argparse parser; its handler raises ``RegistryError`` for user
errors (unreadable or empty token file, bad registry root). FastAPI and uvicorn are imported only when the
server starts, so building the ``l2lzo`` parser stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable

from registry.artifact import MAX_BYTES
from registry.errors import RegistryError
from registry.store import Registry
from registry.tokens import TOKEN_ENV, load_token
from service import limits


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``serve`` to ``subparsers``; returns its parser."""
    parser = subparsers.add_parser(
        "serve", help="run the policy registry HTTP service",
        description="Serve a policy registry over HTTP (list, download with ETag, resolve by fingerprint, "
                    f"upload with a bearer token). The upload token comes from --token-file, else ${TOKEN_ENV}; "
                    "without one, uploads are disabled.")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options, on any parser (``l2lzo serve`` and ``python -m service`` share them)."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument("--registry", metavar="ROOT", default=None,
                        help="registry folder or fsspec URL (default: $L2LZO_REGISTRY, else "
                             "$XDG_DATA_HOME/l2lzo/registry, else ~/.local/share/l2lzo/registry)")
    parser.add_argument("--token-file", metavar="PATH", default=None,
                        help=f"file holding the upload bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--max-upload-bytes", type=int, default=MAX_BYTES,
                        help=f"largest upload accepted, in bytes (default: {MAX_BYTES})")
    parser.add_argument("--header-timeout", type=_positive(float), default=limits.HEADER_TIMEOUT, metavar="SECONDS",
                        help="close a connection that has not sent a request's complete headers this long after it "
                             f"opened or got its last response (default: {limits.HEADER_TIMEOUT:g})")
    parser.add_argument("--body-timeout", type=_positive(float), default=limits.BODY_TIMEOUT, metavar="SECONDS",
                        help="answer 408 and close the connection when an upload body is not complete this long "
                             f"after its headers (default: {limits.BODY_TIMEOUT:g})")
    parser.add_argument("--keep-alive-timeout", type=_positive(int), default=limits.KEEP_ALIVE_TIMEOUT,
                        metavar="SECONDS", help="close a connection left idle this long after a response "
                                                f"(default: {limits.KEEP_ALIVE_TIMEOUT})")
    parser.add_argument("--max-connections", type=_positive(int), default=limits.MAX_CONNECTIONS, metavar="N",
                        help="connections served at once; a request arriving while more are open gets 503 "
                             f"(default: {limits.MAX_CONNECTIONS})")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="server log level (default: info)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Start the server and block until it is stopped."""
    import uvicorn

    from service.app import create_app
    from service.server import ServiceConfig

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)-8s %(message)s")
    token = load_token(args.token_file)
    # A larger upload limit must also raise the registry's file limit; a smaller one must not stop it from
    # reading files that are already stored.
    registry = Registry(args.registry, max_bytes=max(args.max_upload_bytes, MAX_BYTES))
    app = create_app(registry, token=token, max_upload_bytes=args.max_upload_bytes, body_timeout=args.body_timeout)
    server = uvicorn.Server(ServiceConfig(
        app, host=args.host, port=args.port, log_level=args.log_level, header_timeout=args.header_timeout,
        keep_alive_timeout=args.keep_alive_timeout, max_connections=args.max_connections))
    # uvicorn re-raises the Ctrl-C it shut down on; as with uvicorn.run, that is a normal stop.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise RegistryError(f"the server did not start on {args.host}:{args.port} (see the log above)")


def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text!r}")
        return value
    return parse

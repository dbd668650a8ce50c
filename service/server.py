"""uvicorn with the timeouts and limits that a port open to the network needs.

uvicorn by itself closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``),
bounds the size of request headers (h11's 16 KiB ``max_incomplete_event_size``) and answers 503 to requests
beyond ``limit_concurrency``, but never bounds how long it waits for a request's headers: a connection that
sends nothing, or half a request line, is held open for ever. ``HeaderDeadlineProtocol`` adds that bound; the
upload body's own deadline is the app's (``service.app.create_app(body_timeout=...)``), which can answer 408.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from service import limits


class HeaderDeadlineProtocol(AutoHTTPProtocol):
    """uvicorn's HTTP/1.1 protocol (h11, or httptools where installed), closing any connection that has not sent
    a request's complete headers ``config.header_timeout`` seconds after it opened or after its last response.

    Both uvicorn protocols make a new ``cycle`` when a request's headers are complete and call
    ``on_response_complete`` when its response is sent; a deadline armed at either moment has passed without a
    request when the connection's cycle is still the one it was armed with and no response is in progress.
    A request being served is never cut: its body has the app's deadline, its response is the app's business.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._header_deadline = self.loop.call_later(self.config.header_timeout, self._header_deadline_passed,
                                                     self.cycle)

    def _header_deadline_passed(self, armed_with: object) -> None:
        idle = self.cycle is armed_with and (self.cycle is None or self.cycle.response_complete)
        if idle and not self.transport.is_closing():
            self.transport.close()


class ServiceConfig(uvicorn.Config):
    """A ``uvicorn.Config`` serving with ``HeaderDeadlineProtocol``.

    ``header_timeout``: seconds a connection may take to send a request's headers (from when it opened or got
    its last response); ``keep_alive_timeout``: seconds an idle connection is kept after a response;
    ``max_connections``: connections served at once: a request that arrives while more are open gets 503 and its
    connection is closed (the operating system still accepts further connections; the header deadline bounds
    how long they stay). Other keywords go to uvicorn.
    """

    def __init__(self, app: Any, *, header_timeout: float = limits.HEADER_TIMEOUT,
                 keep_alive_timeout: int = limits.KEEP_ALIVE_TIMEOUT, max_connections: int = limits.MAX_CONNECTIONS,
                 **kwargs: Any) -> None:
        # uvicorn refuses a request when open connections (its own included) reach limit_concurrency.
        super().__init__(app, http=HeaderDeadlineProtocol, timeout_keep_alive=keep_alive_timeout,
                         limit_concurrency=max_connections + 1, **kwargs)
        self.header_timeout = header_timeout

"""Defaults of ``l2lzo serve``'s timeouts and limits, in a module with no imports, so the CLI can show them
without loading FastAPI or uvicorn. What each one bounds: see ``service.server.ServiceConfig`` and
``service.app.create_app``."""

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0
KEEP_ALIVE_TIMEOUT = 5
MAX_CONNECTIONS = 200

"""The l2lzo policy service: a FastAPI app over ``registry`` (``service.app.create_app``).

Nothing is imported here, so ``service.cli`` can be loaded by ``l2lzo --help`` without importing FastAPI.
"""

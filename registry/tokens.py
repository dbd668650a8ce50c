"""The upload token of a registry service: shared by the server (``l2lzo serve``) and by uploaders
(``l2lzo meta-train --server``), so both read it the same way."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from registry.errors import RegistryError

TOKEN_ENV = "L2LZO_REGISTRY_TOKEN"
log = logging.getLogger(__name__)


def load_token(token_file: str | None) -> str | None:
    """The upload token from ``token_file``, else ``$L2LZO_REGISTRY_TOKEN``, else None (uploads disabled)."""
    if token_file is None:
        return os.environ.get(TOKEN_ENV, "").strip() or None
    path = Path(token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"cannot read token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise RegistryError(f"token file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by other users; chmod 600 it", path)
    return token

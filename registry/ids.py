"""Model ids: normalisation of Hugging Face style ids, and their on-disk directory names.

A normalised id is one segment (``smollm2-135m``) or two joined by one ``/`` (``huggingfacetb/smollm2-135m-instruct``),
each segment lowercase ``[a-z0-9][a-z0-9._-]*``, at most 96 characters, without ``--`` or ``..`` and not ending
in ``-`` or ``.`` (the Hugging Face hub's own rules, lowercased). The directory name joins the segments with
``--`` like the HF cache does. Because ``--`` cannot occur inside a segment and a segment cannot start or end
with ``-``, the mapping is injective and reversible, and a directory name can never contain a path separator
or be ``.``/``..``: path traversal is impossible by construction, not by filtering.
"""

from __future__ import annotations

import re

from registry.errors import InvalidModelId

MAX_SEGMENT_LENGTH = 96
_SEGMENT = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9_])?")
_HF_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/")
_DIR_SEPARATOR = "--"


def normalize_model_id(raw: str) -> str:
    """The canonical form of a model id, or ``InvalidModelId`` explaining why it has none.

    Strips surrounding whitespace, a leading ``https://huggingface.co/`` and trailing ``/``, then lowercases.
    """
    if not isinstance(raw, str):
        raise InvalidModelId(f"model id must be a string, got {type(raw).__name__}")
    text = raw.strip()
    for prefix in _HF_PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            break
    text = text.rstrip("/").lower()
    if not text:
        raise InvalidModelId(f"empty model id {_show(raw)}")
    segments = text.split("/")
    if len(segments) > 2:
        raise InvalidModelId(f"invalid model id {_show(raw)}: at most one '/' (like 'org/name')")
    for segment in segments:
        _check_segment(raw, segment)
    return "/".join(segments)


def _check_segment(raw: str, segment: str) -> None:
    if not segment:
        raise InvalidModelId(f"invalid model id {_show(raw)}: empty part")
    if len(segment) > MAX_SEGMENT_LENGTH:
        raise InvalidModelId(f"invalid model id {_show(raw)}: a part is longer than {MAX_SEGMENT_LENGTH} characters")
    if "--" in segment or ".." in segment:
        raise InvalidModelId(f"invalid model id {_show(raw)}: '--' and '..' are not allowed")
    if not _SEGMENT.fullmatch(segment):
        raise InvalidModelId(f"invalid model id {_show(raw)}: use letters, digits, '-', '_' and '.', starting with a "
                             "letter or digit and not ending in '-' or '.'")


def _show(raw: str) -> str:
    # repr() keeps control characters on one line; the cut keeps a huge input from flooding the message.
    return repr(raw) if len(raw) <= 120 else repr(raw[:120]) + "..."


def model_dirname(model: str) -> str:
    """The directory name of a model id (normalised first), e.g. ``org/name`` -> ``org--name``."""
    return _DIR_SEPARATOR.join(normalize_model_id(model).split("/"))


def model_from_dirname(dirname: str) -> str:
    """The model id a directory name stands for; ``InvalidModelId`` for a name ``model_dirname`` never makes."""
    model = "/".join(dirname.split(_DIR_SEPARATOR))
    try:
        canonical = model_dirname(model)
    except InvalidModelId:
        raise InvalidModelId(f"{dirname!r} is not a registry model directory") from None
    if canonical != dirname:
        raise InvalidModelId(f"{dirname!r} is not a registry model directory")
    return model

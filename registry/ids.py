"""Model ids: normalisation of Hugging Face style ids, and their on-disk directory names.

A normalised id is one segment (``smollm2-135m``) or two joined by one ``/`` (``huggingfacetb/smollm2-135m-instruct``),
each segment lowercase ``[a-z0-9][a-z0-9._-]*``, at most 96 characters, without ``--`` or ``..`` and not ending
in ``-`` or ``.`` (the Hugging Face hub's own rules, lowercased). The directory name joins the segments with
``--`` like the HF cache does. Because ``--`` cannot occur inside a segment and a segment cannot start or end
with ``-``, the mapping is injective and reversible, and a directory name can never contain a path separator
or be ``.``/``..``: path traversal is impossible by construction, not by filtering.

An id is ASCII or an error: lowercasing and whitespace stripping are done on ASCII only, so no other character
can quietly become part of a valid id (the Kelvin sign ``K`` lowercases to ``k`` in Unicode, and ``str.strip``
removes separators such as ``\\x1c`` and ``\\x85``).
"""

from __future__ import annotations

import re

from registry.errors import InvalidModelId

MAX_SEGMENT_LENGTH = 96
_SEGMENT = rf"[A-Za-z0-9](?:[A-Za-z0-9._-]{{0,{MAX_SEGMENT_LENGTH - 2}}}[A-Za-z0-9_])?"
# An id exactly as written, up to ASCII case: what the service accepts in a URL and declares in its OpenAPI
# schema. The same text is valid ECMA-262 (JSON Schema) and Python syntax; anchored for JSON Schema's search
# semantics, and used with fullmatch here (Python's "$" alone would also match before a final newline).
MODEL_ID_PATTERN = rf"^(?!.*(?:--|\.\.)){_SEGMENT}(?:/{_SEGMENT})?$"
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
_HF_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/")
_DIR_SEPARATOR = "--"


def normalize_model_id(raw: str) -> str:
    """The canonical form of a model id, or ``InvalidModelId`` explaining why it has none.

    Strips surrounding spaces, a leading ``https://huggingface.co/`` and trailing ``/``, then lowercases. The
    result is ``raw`` itself, lowercased, exactly when ``raw`` matches ``MODEL_ID_PATTERN``.
    """
    if not isinstance(raw, str):
        raise InvalidModelId(f"model id must be a string, got {type(raw).__name__}")
    if not (raw.isascii() and raw.isprintable()):
        raise InvalidModelId(f"invalid model id {_show(raw)}: only printable ASCII characters are allowed")
    text = raw.strip(" ")
    for prefix in _HF_PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            break
    text = text.rstrip("/")
    if not _MODEL_ID.fullmatch(text):
        raise InvalidModelId(_explain(raw, text))
    return text.lower()


def exact_model_id(raw: str) -> str:
    """The normalised id of ``raw`` if it is written exactly as an id (``MODEL_ID_PATTERN``: any ASCII case, but no
    surrounding spaces, URL prefix or trailing ``/``), else ``InvalidModelId``. The service's rule for ids in URLs.
    """
    model = normalize_model_id(raw)
    if model != raw.lower():
        raise InvalidModelId(f"invalid model id {_show(raw)}: write the id itself, like {model!r}")
    return model


def _explain(raw: str, text: str) -> str:
    """Why ``text`` (``raw`` after stripping) does not match ``MODEL_ID_PATTERN``, in one line."""
    if not text:
        return f"empty model id {_show(raw)}"
    segments = text.split("/")
    if len(segments) > 2:
        return f"invalid model id {_show(raw)}: at most one '/' (like 'org/name')"
    if not all(segments):
        return f"invalid model id {_show(raw)}: empty part"
    if any(len(segment) > MAX_SEGMENT_LENGTH for segment in segments):
        return f"invalid model id {_show(raw)}: a part is longer than {MAX_SEGMENT_LENGTH} characters"
    if "--" in text or ".." in text:
        return f"invalid model id {_show(raw)}: '--' and '..' are not allowed"
    return (f"invalid model id {_show(raw)}: use letters, digits, '-', '_' and '.', starting with a letter or digit "
            "and not ending in '-' or '.'")


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

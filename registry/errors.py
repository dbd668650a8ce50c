"""Errors whose message is meant for the user.

Every message is one line. The ``l2lzo`` CLI prints it as ``l2lzo: error: <message>`` (exit status 2) and the
service returns it as ``{"error": "<message>"}`` with a 4xx status, so messages say what is wrong and, where
it helps, what to do; they never contain secrets.
"""


class RegistryError(Exception):
    """Base class: a problem with the user's input or the registry's contents, explained in one line."""


class NotFound(RegistryError):
    """The model, version or fingerprint has no policy in the registry."""


class InvalidArtifact(RegistryError):
    """Bytes that are not a valid policy artifact (format, limits, metadata or integrity)."""


class CorruptArtifact(RegistryError):
    """A file already in the registry that fails validation or its sha256 (damaged storage or tampering).

    Readers skip such versions in listings; ``Registry.verify`` reports them.
    """


class InvalidModelId(RegistryError):
    """A model id that is not a valid (normalisable) Hugging Face style id."""


class InvalidRequest(RegistryError):
    """A malformed query other than a model id: a version that is not a positive integer or 'latest', a
    fingerprint that is not hex."""

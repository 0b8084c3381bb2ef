"""What can go wrong while serving, in the data plane's words rather than HTTP's.

The data plane and the engine raise these; :mod:`.app` maps each to its status once, and answers
it in the shape of the protocol that was asked (``{"error": "..."}`` for V2 and V1, OpenAI's
``{"error": {"message", "type", "param", "code"}}`` on its routes). ``retry_after`` (seconds) says
the error is passing; ``param`` names the request field at fault.
"""

from __future__ import annotations

from ..lm.engine import ContextTooLong  # the engine's own words for it; answered as a 400

__all__ = [
    "Conflict",
    "ContextTooLong",
    "Forbidden",
    "InvalidInput",
    "ModelFailed",
    "ModelNotFound",
    "NotReady",
    "OverCapacity",
    "ServingError",
]


class ServingError(Exception):
    """A request the server cannot answer as asked; the message is what the client reads."""

    def __init__(self, message: str, *, retry_after: float | None = None, param: str | None = None):
        super().__init__(message)
        self.message, self.retry_after, self.param = message, retry_after, param


class InvalidInput(ServingError, ValueError):
    """The request itself is wrong: a shape, a datatype, a value out of range."""


class ModelNotFound(ServingError):
    """No model (or version) of that name is served here."""


class NotReady(ServingError):
    """The model exists but cannot answer yet: loading, or its helper process restarting."""


class Conflict(ServingError):
    """The request clashes with work already under way (a model already loading)."""


class OverCapacity(ServingError):
    """Too much is waiting already; ask again after ``retry_after`` seconds."""


class Forbidden(ServingError):
    """The server was not started to allow this (loading models without a token)."""


class ModelFailed(ServingError):
    """The model ran but its answer cannot be sent: an output that is NaN or infinite (a 500, never a
    200 carrying ``NaN`` or ``null``)."""

"""What can go wrong while serving, in the data plane's words rather than HTTP's.

The data plane and the engine raise these; :mod:`.app` maps each to its status once, and answers
it in the shape of the protocol that was asked (``{"error": "..."}`` for V2 and V1, OpenAI's
``{"error": {"message", "type", "param", "code"}}`` on its routes). ``retry_after`` (seconds) says
the error is passing; ``param`` names the request field at fault.
"""

from __future__ import annotations

from ..lm.runtime.engine import ContextTooLong, Interrupted  # the engine's own words: a 400, and a 503 (stopping)

__all__ = [
    "STATUS",
    "Conflict",
    "ContextTooLong",
    "Forbidden",
    "InvalidInput",
    "ModelFailed",
    "ModelNotFound",
    "NotReady",
    "OverCapacity",
    "ServingError",
    "message_of",
    "status_of",
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


# each error's status, the same in every protocol and whether the answer is whole or streamed (the first
# match counts: subclasses first). Anything else (a model that crashed) is a 500.
STATUS: dict[type[Exception], int] = {
    ContextTooLong: 400,
    InvalidInput: 400,
    Forbidden: 403,
    ModelNotFound: 404,
    Conflict: 409,
    NotReady: 503,
    OverCapacity: 503,
    Interrupted: 503,  # the server is stopping: try another instance
    ServingError: 500,
}


def status_of(err: BaseException) -> int:
    return next((code for kind, code in STATUS.items() if isinstance(err, kind)), 500)


def message_of(err: BaseException) -> str:
    """What the client reads: a known error's own words; for anything else, what failed (the engine
    already words a model's crash as "generation failed: ...")."""
    if isinstance(err, (ServingError, ContextTooLong, Interrupted)) or str(err).startswith("generation failed"):
        return str(err)
    return f"the server failed: {type(err).__name__}: {err}"

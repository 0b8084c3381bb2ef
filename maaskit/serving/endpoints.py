"""What the app asks of each protocol it serves, so that adding a protocol touches its own module and
the app's list of them, nothing else (KServe's servers keep the same split: endpoints classes on one
data plane).

A protocol says: its routes; which of them run a model (the metrics count and time those, and a
draining server waits for them); the paths anyone may reach without a token (health probes); which
paths answer errors in its shape and what that shape is; and its part of the OpenAPI document (the
paths and bodies only the served models can say).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fastapi import APIRouter

    from .dataplane import ModelRepository

__all__ = ["Endpoints"]


class Endpoints:
    """The base of ``V2Endpoints``, ``V1Endpoints`` and ``OpenAIEndpoints``."""

    name: ClassVar[str]  # its label in the metrics ("v2", "v1", "openai")
    # the paths that run a model; a group named "model" takes the model's name where the path holds it
    inference: ClassVar[re.Pattern[str]]
    open_paths: ClassVar[tuple[str, ...]] = ()  # path prefixes that need no token

    def router(self) -> APIRouter:
        raise NotImplementedError

    def inference_model(self, path: str) -> str | None:
        """The model a request to ``path`` runs ("" where the body names it), or None: it runs none."""
        match = self.inference.match(path)
        return None if match is None else match.groupdict().get("model") or ""

    def owns_errors(self, path: str) -> bool:
        """Errors on ``path`` take this protocol's shape (:meth:`error_body`); the default shape,
        ``{"error": "..."}``, is V2's and V1's."""
        return False

    def error_body(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> Any:
        return {"error": message}

    def document(self, doc: dict, repository: ModelRepository) -> None:
        """Write into ``doc`` (FastAPI's document of every route) what only the served models can say."""

"""Errors the scoring core raises for a request it cannot serve.

Each carries the HTTP status and the OpenAI error-envelope fields, so the local server and the
Azure ML ``score.py`` turn them into the same ``{"error": {...}}`` answer.
"""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    status = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ServingError):
    status = 400
    type = "invalid_request_error"


class ModelNotFound(ServingError):
    status = 404
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = "model", code: str | None = "model_not_found") -> None:
        super().__init__(message, param=param, code=code)


class AdapterConflict(ServingError):
    """An adapter name is taken by a different path, or names the base model."""

    status = 409
    type = "invalid_request_error"

"""Authentication: ``Authorization: Bearer <key>`` or ``api-key: <key>`` on every route but /health.

It runs as a plain ASGI middleware, before FastAPI reads the body, so an unauthenticated caller gets
401 whatever it sent and learns nothing about the request's validity. The project the key belongs to
is put on ``request.state.project`` for the routers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from tuneplane.api.errors import ApiError, error_response
from tuneplane.services.keys import KeyVerifier

PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def _presented_secret(headers: list[tuple[bytes, bytes]]) -> str | None:
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
    return bearer or api_key


class AuthMiddleware:
    def __init__(self, app, verifier: KeyVerifier):
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        secret = _presented_secret(scope["headers"])
        if secret is None:
            err = ApiError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or in the 'api-key' header.",
                code="missing_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await error_response(err)(scope, receive, send)
            return
        project = self.verifier.project_for(secret)
        if project is None:
            err = ApiError(
                401,
                f"Incorrect API key provided: {secret[:4]}****.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await error_response(err)(scope, receive, send)
            return
        scope.setdefault("state", {})["project"] = project
        await self.app(scope, receive, send)


def project_of(request: Request) -> str:
    """The project of the key that authenticated this request (set by AuthMiddleware).

    Read directly rather than through a FastAPI dependency: dependency resolution is a measurable
    share of each request's cost on the hot read paths.
    """
    return request.state.project


async def _current_project(request: Request) -> str:
    return request.state.project


# The same as a FastAPI dependency, for routes off the hot path (``project: Project``).
Project = Annotated[str, Depends(_current_project)]


async def require_api_version(api_version: Annotated[str | None, Query(alias="api-version")] = None) -> None:
    """Azure OpenAI's data-plane paths under /openai (not /openai/v1) carry ``?api-version=``."""
    if not api_version:
        raise ApiError(
            400,
            "Missing required query parameter 'api-version' (for example api-version=2024-10-21).",
            param="api-version",
            code="missing_api_version",
        )

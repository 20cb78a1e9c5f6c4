"""The OpenAI error envelope, ``{"error": {"message", "type", "param", "code"}}``, for every failure.

Bad input is always a 4xx that names the field (``param``); FastAPI's 422 validation errors become
400s like OpenAI's. Only a genuine bug reaches the 500 handler, and even that answers in the envelope.
"""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneplane.ports import BackendError

log = logging.getLogger("tuneplane.api")

INVALID_REQUEST = "invalid_request_error"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = INVALID_REQUEST,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers


def bad_request(message: str, *, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def not_found(what: str, ident: str, *, param: str, code: str) -> ApiError:
    return ApiError(404, f"No {what} found with id '{ident}'.", param=param, code=code)


def envelope(message: str, type: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(
        envelope(err.message, err.type, err.param, err.code), status_code=err.status, headers=err.headers
    )


# pydantic error type -> our error code
_CODES = {
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
    "json_invalid": "invalid_json",
    "model_attributes_type": "invalid_type",
    "dict_type": "invalid_type",
    "model_type": "invalid_type",
    "string_type": "invalid_type",
    "int_type": "invalid_type",
    "bool_type": "invalid_type",
    "list_type": "invalid_type",
    "float_type": "invalid_type",
    "literal_error": "invalid_value",
}
# Parts of a pydantic location that name a union member or validator, not a field.
_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}


def param_from_location(loc: tuple) -> str | None:
    """("body", "method", "dpo", "hyperparameters", "beta") -> "method.dpo.hyperparameters.beta"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    if "[key]" in parts:  # a bad dict key: name the dict, not the (user-chosen) key
        parts = parts[: parts.index("[key]") - 1]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_NAMES or re.search(r"[\[\(']", part):
            continue
        elif part.startswith(("function-", "constrained-")):
            continue
        else:
            out += ("." if out else "") + part
    return out or None


def _validation_message(err: dict, param: str | None) -> str:
    if err["type"] == "json_invalid":
        return f"The request body is not valid JSON: {err.get('ctx', {}).get('error', 'parse error')}."
    if err["type"] == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}."
    if err["type"] == "missing":
        return f"Missing required parameter: '{param}'."
    msg = err.get("msg", "invalid value")
    msg = msg.removeprefix("Value error, ")
    return f"Invalid value for '{param}': {msg}." if param else f"Invalid request body: {msg}."


def backend_unavailable(exc: BackendError) -> JSONResponse:
    """Azure misconfigured (the message names the setting, ``param`` too) or unreachable: a 503 in
    the envelope, never a traceback; what was accepted stays stored and the reconciler resumes."""
    log.warning("backend unavailable: %s: %s", exc.code, exc.message)
    return error_response(ApiError(503, exc.message, param=getattr(exc, "setting", None), code=exc.code,
                                   type="server_error", headers={"Retry-After": "30"}))


def unavailable_app(exc: BackendError) -> FastAPI:
    """The app served when the backend cannot even be built (an Azure setting missing or refused at
    start-up): the process stays up and every request, /health included, gets the 503 that names
    the setting, so clients and probes see why instead of a crash loop."""
    app = FastAPI(title="tuneplane (unavailable)", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.unavailable = exc

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def _unavailable(path: str):
        return backend_unavailable(exc)

    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        err = errors[0] if errors else {"type": "invalid", "loc": ("body",), "msg": "invalid request"}
        param = param_from_location(tuple(err.get("loc", ())))
        if err["type"] == "json_invalid" or (param is None and err.get("loc", ("",))[0] == "body"):
            param = "body"
        code = _CODES.get(err["type"], "invalid_value")
        return error_response(ApiError(400, _validation_message(err, param), param=param, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"Unknown request URL: {request.method} {request.url.path}."
        return error_response(
            ApiError(exc.status_code, message, code=codes.get(exc.status_code), headers=getattr(exc, "headers", None))
        )

    @app.exception_handler(BackendError)
    async def _backend(request: Request, exc: BackendError):
        return backend_unavailable(exc)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        if isinstance(exc, BackendError):  # raised in a middleware (auth's key lookup), past _backend
            return backend_unavailable(exc)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            ApiError(500, "The server had an error while processing your request.", type="server_error", code="internal_error")
        )

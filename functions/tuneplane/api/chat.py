"""Routes: chat completions, proxied by model name to the inference process that serves the model.

``POST /chat/completions`` (under /v1 and /openai/v1) and Azure's
``POST /openai/deployments/{deployment}/chat/completions?api-version=…`` (the deployment name is the
model name). A project reaches the catalog's base models (their process starts on demand) and its own
deployed ``ft:`` models and checkpoints; anything else, including another project's model, is a 404.

The control plane checks only what it needs to route (the body is a JSON object, ``model`` and
``messages`` are there); the inference process validates every sampling field and answers bad ones
with a 400 naming ``param``, which passes through unchanged, as does the SSE stream.

On the Azure backend (``TUNEPLANE_BACKEND=azure``) the model's managed online deployment answers,
through ``AzureDeployer.chat`` (an Entra token or the endpoint key, never a local process). Only
deployed ``ft:`` models are served there. Azure ML's scoring server answers one whole response per
call, so for ``stream: true`` the deployment is called without streaming and its answer is sent as
a valid SSE stream: one chunk per choice holding the whole message, a final chunk with each
``finish_reason`` (then a usage chunk if ``stream_options.include_usage``), then ``[DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Path, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from tuneplane.api.auth import Project
from tuneplane.api.errors import ApiError, bad_request
from tuneplane.api.schemas import ErrorResponse
from tuneplane.backends.local_deployer import LocalDeployer
from tuneplane.domain.catalog import Catalog
from tuneplane.ports import BackendError, NotFound

# 503: the serving backend is unreachable or misconfigured (on Azure, error.param names the setting).
ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
          503: {"model": ErrorResponse}}
# Generation on CPU can take minutes for long answers; connecting to a local process cannot.
UPSTREAM_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
MAX_BODY_BYTES = 4 * 1024 * 1024


class ChatRouting:
    """Finds the process for a model name within a project."""

    def __init__(self, deployer: LocalDeployer, catalog: Catalog) -> None:
        self.deployer = deployer
        self.catalog = catalog
        # The Azure deployer calls its endpoint itself (``chat``); the local one hands out a URL.
        self.remote = callable(getattr(deployer, "chat", None))

    async def endpoint(self, project: str, model: str) -> str:
        try:
            if model in self.catalog:
                return await run_in_threadpool(self.deployer.base_endpoint, model)
            status = await run_in_threadpool(self.deployer.status, project, model)
            if status is not None and status["status"] == "deploying":
                raise ApiError(409, f"The model '{model}' is still being deployed; try again shortly.",
                               param="model", code="deployment_in_progress", headers={"Retry-After": "5"})
            url = None
            if status is not None and status["status"] == "succeeded":
                url = await run_in_threadpool(self.deployer.endpoint_for, project, model)
        except BackendError as exc:
            raise _unavailable(model, exc) from exc
        if url is None:
            raise ApiError(404, f"The model '{model}' does not exist or is not deployed. Deploy it with POST /v1/deployments.",
                           param="model", code="model_not_found")
        return url

    async def revive(self, project: str, model: str) -> str | None:
        try:
            return await run_in_threadpool(self.deployer.revive, project, model)
        except BackendError as exc:
            raise _unavailable(model, exc) from exc


def chat_router(routing: ChatRouting) -> APIRouter:
    router = APIRouter(tags=["chat"], responses=ERRORS)

    @router.post("/chat/completions", summary="Create a chat completion")
    async def create_chat_completion(request: Request, project: Project):
        body = await _body(request)
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise bad_request("Missing required parameter: 'model' (a non-empty string).", param="model",
                              code="missing_required_parameter" if model is None else "invalid_type")
        return await _proxy(routing, project, model, body)

    return router


def azure_chat_router(routing: ChatRouting) -> APIRouter:
    router = APIRouter(tags=["chat"], responses=ERRORS, include_in_schema=False)

    @router.post("/deployments/{deployment}/chat/completions")
    async def create_azure_chat_completion(
        deployment: Annotated[str, Path(min_length=1, max_length=256)], request: Request, project: Project
    ):
        body = await _body(request)
        # The deployment in the path decides; a body "model" (which Azure ignores) must not contradict it.
        body["model"] = deployment
        return await _proxy(routing, project, deployment, body)

    return router


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.", code="request_too_large")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.", param="body", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", param="body", code="invalid_type")
    messages = body.get("messages")
    if messages is None:
        raise bad_request("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("Invalid value for 'messages': a non-empty array of messages is required.",
                          param="messages", code="invalid_value")
    return body


async def _proxy(routing: ChatRouting, project: str, model: str, body: dict[str, Any]) -> Response:
    if routing.remote:
        return await _remote_chat(routing, project, model, body)
    url = await routing.endpoint(project, model)
    client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT)
    try:
        try:
            upstream = await _send(client, url, body)
        except (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            # The process died since it was last seen healthy (a connection refused, or reset before
            # any answer): start it again (its adapters are registered again too) and retry once.
            # Generation has no side effects, so the retry is safe.
            url = await routing.revive(project, model)
            if url is None:
                raise ApiError(404, f"The model '{model}' is not deployed.", param="model", code="model_not_found")
            upstream = await _send(client, url, body)
    except httpx.HTTPError as exc:
        await client.aclose()
        raise ApiError(503, f"The deployment of '{model}' did not answer: {exc}.", type="server_error",
                       code="deployment_unavailable", headers={"Retry-After": "5"}) from exc
    except BaseException:
        await client.aclose()
        raise

    async def close() -> None:
        await upstream.aclose()
        await client.aclose()

    content_type = upstream.headers.get("content-type", "")
    if upstream.status_code == 200 and content_type.startswith("text/event-stream"):
        return StreamingResponse(upstream.aiter_raw(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"}, background=BackgroundTask(close))
    try:
        content = await upstream.aread()
    finally:
        await close()
    if upstream.status_code >= 500 or not content_type.startswith("application/json"):
        raise ApiError(502, f"The deployment of '{model}' failed (HTTP {upstream.status_code}).",
                       type="server_error", code="deployment_error")
    return Response(content, status_code=upstream.status_code, media_type="application/json")


async def _send(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> httpx.Response:
    request = client.build_request("POST", f"{url}/v1/chat/completions", json=body)
    return await client.send(request, stream=True)


def _unavailable(model: str, exc: BackendError) -> ApiError:
    return ApiError(503, f"The deployment of '{model}' is not available: {exc.message}", type="server_error",
                    code=exc.code, headers={"Retry-After": "10"})


# -- Azure: the managed online deployment answers ---------------------------------------------


async def _remote_chat(routing: ChatRouting, project: str, model: str, body: dict[str, Any]) -> Response:
    deployer = routing.deployer
    try:
        status = await run_in_threadpool(deployer.status, project, model)
    except BackendError as exc:
        raise _unavailable(model, exc) from exc
    if status is None:
        hint = (" On Azure only fine-tuned models are served; fine-tune it, then deploy the ft: model."
                if model in routing.catalog else " Deploy it with POST /v1/deployments.")
        raise ApiError(404, f"The model '{model}' does not exist or is not deployed.{hint}", param="model",
                       code="model_not_found")
    if status["status"] == "deploying":
        raise ApiError(409, f"The model '{model}' is still being deployed; try again shortly.",
                       param="model", code="deployment_in_progress", headers={"Retry-After": "30"})
    if status["status"] != "ready":
        raise ApiError(503, f"The deployment of '{model}' is {status['status']} (Azure ML state "
                       f"{status.get('azure_state')}).", type="server_error", code="deployment_unavailable",
                       param="model", headers={"Retry-After": "30"})
    stream = body.get("stream") is True
    options = body.get("stream_options") if stream else None
    if stream:
        body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    try:
        code, payload = await run_in_threadpool(deployer.chat, project, model, body)
    except NotFound as exc:
        raise ApiError(404, f"The model '{model}' is not deployed.", param="model", code="model_not_found") from exc
    except BackendError as exc:
        raise _unavailable(model, exc) from exc
    if code >= 500 or not isinstance(payload, dict):
        raise ApiError(502, f"The deployment of '{model}' failed (HTTP {code}).", type="server_error",
                       code="deployment_error")
    if code != 200 or not stream:
        return Response(json.dumps(payload), status_code=code, media_type="application/json")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return StreamingResponse(iter(_as_sse(payload, model, include_usage)), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _as_sse(completion: dict[str, Any], model: str, include_usage: bool) -> list[bytes]:
    """A whole ``chat.completion`` as the chunks OpenAI would have streamed (see the docstring)."""
    base = {"id": completion.get("id") or f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": completion.get("created") or int(time.time()), "model": completion.get("model") or model}
    if completion.get("system_fingerprint"):
        base["system_fingerprint"] = completion["system_fingerprint"]
    choices = completion.get("choices") or []
    chunks = []
    for i, choice in enumerate(choices):
        message = choice.get("message") or {}
        delta = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": n, **call} for n, call in enumerate(message["tool_calls"])]
        chunks.append({**base, "choices": [{"index": choice.get("index", i), "delta": delta, "logprobs": None,
                                            "finish_reason": None}]})
    chunks.append({**base, "choices": [{"index": choice.get("index", i), "delta": {}, "logprobs": None,
                                        "finish_reason": choice.get("finish_reason") or "stop"}
                                       for i, choice in enumerate(choices)]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion.get("usage")})
    events = [f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode() for chunk in chunks]
    return events + [b"data: [DONE]\n\n"]

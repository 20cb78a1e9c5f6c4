"""The local inference server: one process per base model, on loopback, OpenAI wire shape.

The control plane starts it, registers fine-tuned adapters with ``POST /adapters`` and proxies
``/v1/chat/completions`` to it, routing by model name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneplane_training.serving.core import PreparedChat, ScoringCore
from tuneplane_training.serving.errors import InvalidRequest, ModelNotFound, ServingError

log = logging.getLogger("tuneplane.serving")
_END = object()


def create_app(core: ScoringCore) -> FastAPI:
    app = FastAPI(title="tuneplane inference", docs_url=None, redoc_url=None)

    @app.exception_handler(ServingError)
    async def serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse(exc.envelope(), status_code=exc.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "base_model": core.base_name, "adapters": len(core.adapters())}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "tuneplane"} for name in core.model_names()]
        return {"object": "list", "data": data}

    @app.get("/adapters")
    async def list_adapters() -> dict[str, Any]:
        return {"object": "list", "data": core.adapters()}

    @app.post("/adapters")
    async def register_adapter(request: Request) -> dict[str, Any]:
        body = await _json(request)
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object with 'name' and 'path'.")
        # Loading touches the model, so it waits for the generation in progress, off the event loop.
        return await run_in_threadpool(core.register_adapter, body.get("name"), body.get("path"))

    @app.delete("/adapters/{name:path}")
    async def unregister_adapter(name: str) -> dict[str, Any]:
        if not await run_in_threadpool(core.unregister_adapter, name):
            raise ModelNotFound(f"No adapter named {name!r} is registered.", param="name", code="adapter_not_found")
        return {"name": name, "deleted": True}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        prepared = core.prepare(await _json(request))
        if prepared.request.stream:
            return StreamingResponse(_sse(core, prepared), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await run_in_threadpool(core.complete, prepared)

    return app


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc


async def _sse(core: ScoringCore, prepared: PreparedChat) -> AsyncIterator[str]:
    chunks = core.stream(prepared)
    try:
        while (chunk := await run_in_threadpool(next, chunks, _END)) is not _END:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
    except ServingError as exc:  # headers are already sent: the error travels as an event
        yield f"data: {json.dumps(exc.envelope())}\n\n"
    except Exception as exc:
        log.exception("generation failed")
        yield f"data: {json.dumps(ServingError(f'generation failed: {exc}').envelope())}\n\n"
    finally:
        chunks.close()  # stops the generation if the client went away

"""Routes: /webhook_endpoints, in the shape of openai's ``client.webhooks`` (create, retrieve, update,
list, delete, rotate_secret, test). The signing secret is returned only by create and rotate_secret.

Plain ``http://`` URLs are accepted as well as ``https://``, because a self-hosted service often
calls receivers on its own network.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from tuneplane.api.auth import Project
from tuneplane.api.errors import ApiError
from tuneplane.api.responses import json_response, page
from tuneplane.api.schemas import ErrorResponse
from tuneplane.webhooks import EVENT_TYPES, WebhookDispatcher, WebhookStore, event_id_for, new_secret, secret_hint

ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
EndpointId = Annotated[str, Path(min_length=1, max_length=128)]
EventType = Literal["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    return url


class CreateEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    url: str = Field(min_length=1, max_length=2048)
    event_types: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return _check_url(value)


class UpdateEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=256)
    url: str | None = Field(None, min_length=1, max_length=2048)
    event_types: list[EventType] | None = Field(None, min_length=1, max_length=len(EVENT_TYPES))

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        return value if value is None else _check_url(value)


class RotateSecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_old_secret_active_for_24_hours: bool = False


class TestEndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_type: EventType


def render(endpoint: dict, *, with_secret: bool = False) -> dict:
    out = {
        "id": endpoint["id"], "object": "webhook_endpoint", "created_at": endpoint["created_at"],
        "updated_at": endpoint["updated_at"], "name": endpoint["name"], "url": endpoint["url"],
        "event_types": endpoint["event_types"], "signing_secret_hint": secret_hint(endpoint["secret"]),
    }
    if with_secret:
        out["signing_secret"] = endpoint["secret"]
    return out


def webhooks_router(store: WebhookStore, dispatcher: WebhookDispatcher) -> APIRouter:
    router = APIRouter(prefix="/webhook_endpoints", tags=["webhooks"], responses=ERRORS)

    async def _get(project: str, endpoint_id: str) -> dict:
        endpoint = await run_in_threadpool(store.get_endpoint, project, endpoint_id)
        if endpoint is None:
            raise ApiError(404, f"No webhook endpoint found with id '{endpoint_id}'.", param="webhook_endpoint_id",
                           code="webhook_endpoint_not_found")
        return endpoint

    @router.post("", summary="Create a webhook endpoint")
    async def create_endpoint(body: CreateEndpointRequest, project: Project):
        endpoint = await run_in_threadpool(
            lambda: store.create_endpoint(project, name=body.name, url=body.url, event_types=list(dict.fromkeys(body.event_types)))
        )
        return json_response(render(endpoint, with_secret=True))

    @router.get("", summary="List webhook endpoints")
    async def list_endpoints(project: Project, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                             after: Annotated[str | None, Query(max_length=128)] = None):
        rows = await run_in_threadpool(lambda: store.list_endpoints(project, limit=limit + 1, after=after))
        return json_response(page([render(r) for r in rows[:limit]], len(rows) > limit, with_ids=True))

    @router.get("/{webhook_endpoint_id}", summary="Retrieve a webhook endpoint")
    async def retrieve_endpoint(webhook_endpoint_id: EndpointId, project: Project):
        return json_response(render(await _get(project, webhook_endpoint_id)))

    @router.post("/{webhook_endpoint_id}", summary="Update a webhook endpoint")
    async def update_endpoint(webhook_endpoint_id: EndpointId, body: UpdateEndpointRequest, project: Project):
        await _get(project, webhook_endpoint_id)
        event_types = list(dict.fromkeys(body.event_types)) if body.event_types else None
        endpoint = await run_in_threadpool(
            lambda: store.update_endpoint(project, webhook_endpoint_id, name=body.name, url=body.url, event_types=event_types)
        )
        return json_response(render(endpoint))

    @router.delete("/{webhook_endpoint_id}", summary="Delete a webhook endpoint")
    async def delete_endpoint(webhook_endpoint_id: EndpointId, project: Project):
        if not await run_in_threadpool(store.delete_endpoint, project, webhook_endpoint_id):
            await _get(project, webhook_endpoint_id)  # raises the 404
        return json_response({"id": webhook_endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True})

    @router.post("/{webhook_endpoint_id}/rotate_secret", summary="Rotate the signing secret")
    async def rotate_secret(webhook_endpoint_id: EndpointId, project: Project, body: RotateSecretRequest | None = None):
        if body is not None and body.keep_old_secret_active_for_24_hours:
            raise ApiError(400, "Keeping the old secret active is not supported; rotate when receivers are ready.",
                           param="keep_old_secret_active_for_24_hours", code="unsupported_value")
        await _get(project, webhook_endpoint_id)
        endpoint = await run_in_threadpool(
            lambda: store.update_endpoint(project, webhook_endpoint_id, secret=new_secret())
        )
        return json_response(render(endpoint, with_secret=True))

    @router.post("/{webhook_endpoint_id}/test", summary="Send a sample event to the endpoint")
    async def test_endpoint(webhook_endpoint_id: EndpointId, body: TestEndpointRequest, project: Project):
        endpoint = await _get(project, webhook_endpoint_id)
        job_id = "ftjob-test"
        event_id = event_id_for(project, f"{job_id}-{time.time_ns()}", body.event_type)
        payload = json.dumps({"id": event_id, "object": "event", "created_at": int(time.time()),
                              "type": body.event_type, "data": {"id": job_id}}, separators=(",", ":"))
        try:
            response = await run_in_threadpool(dispatcher.send, endpoint["url"], endpoint["secret"], event_id, payload)
        except Exception as exc:
            raise ApiError(400, f"The endpoint could not be reached: {exc}", param="url", code="webhook_unreachable") from exc
        return json_response({"object": "webhook_endpoint.test", "event_type": body.event_type,
                              "status_code": response.status_code, "success": True,
                              "webhook_endpoint_id": webhook_endpoint_id})

    return router

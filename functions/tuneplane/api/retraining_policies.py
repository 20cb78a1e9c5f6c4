"""Routes: /retraining_policies (create, list, retrieve, delete) and a policy's events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from tuneplane.api.auth import Project
from tuneplane.api.responses import json_response, page
from tuneplane.api.schemas import ErrorResponse
from tuneplane.domain.policies import CreatePolicyRequest, render_policy, render_policy_event
from tuneplane.retraining import PolicyService

ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
          409: {"model": ErrorResponse}}
PolicyId = Annotated[str, Path(min_length=1, max_length=128)]
Cursor = Annotated[str | None, Query(max_length=128)]


class RetrainingPolicy(BaseModel):
    """The wire object; its fields are CreatePolicyRequest's plus the state below."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str
    created_at: int
    name: str
    blob_prefix: dict[str, str]
    model: str
    last_triggered_at: int | None = None
    promoted_model: str | None = None
    promoted_job: str | None = None
    promoted_valid_loss: float | None = None


class RetrainingPolicyList(BaseModel):
    object: str
    data: list[RetrainingPolicy]
    has_more: bool


class RetrainingPolicyDeleted(BaseModel):
    id: str
    object: str
    deleted: bool


class RetrainingPolicyEventList(BaseModel):
    object: str
    data: list[dict[str, Any]]
    has_more: bool


def retraining_router(service: PolicyService) -> APIRouter:
    router = APIRouter(prefix="/retraining_policies", tags=["retraining"], responses=ERRORS)

    @router.post("", response_model=RetrainingPolicy, summary="Create a retraining policy")
    def create_policy(body: CreatePolicyRequest, project: Project):
        return json_response(render_policy(service.create(project, body)))

    @router.get("", response_model=RetrainingPolicyList)
    async def list_policies(project: Project, after: Cursor = None, limit: Annotated[int, Query(ge=1, le=100)] = 20):
        records, has_more = await run_in_threadpool(service.list, project, limit=limit, after=after)
        return json_response(page([render_policy(r) for r in records], has_more))

    @router.get("/{policy_id}", response_model=RetrainingPolicy)
    async def retrieve_policy(policy_id: PolicyId, project: Project):
        return json_response(render_policy(await run_in_threadpool(service.get, project, policy_id)))

    @router.delete("/{policy_id}", response_model=RetrainingPolicyDeleted)
    def delete_policy(policy_id: PolicyId, project: Project):
        service.delete(project, policy_id)
        return json_response({"id": policy_id, "object": "retraining_policy.deleted", "deleted": True})

    @router.get("/{policy_id}/events", response_model=RetrainingPolicyEventList)
    async def list_policy_events(
        policy_id: PolicyId, project: Project, after: Cursor = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ):
        records, has_more = await run_in_threadpool(service.events, project, policy_id, limit=limit, after=after)
        return json_response(page([render_policy_event(r) for r in records], has_more))

    return router

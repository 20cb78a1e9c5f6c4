"""Routes: /fine_tuning/jobs and their events and checkpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request

from tuneplane.api.auth import project_of
from tuneplane.api.errors import bad_request
from tuneplane.api.responses import json_response, page
from tuneplane.api.schemas import (
    ErrorResponse,
    FineTuningJob,
    JobCheckpointList,
    JobEventList,
    JobList,
    render_checkpoint,
    render_event,
    render_job,
)
from tuneplane.domain.jobs import CreateJobRequest
from tuneplane.services.jobs import JobService

ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
JobId = Annotated[str, Path(min_length=1, max_length=128)]
Cursor = Annotated[str | None, Query(max_length=128)]


def _metadata_filter(request: Request) -> dict[str, str] | None:
    """``metadata[key]=value`` query pairs (the openai client's deepObject form)."""
    found = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            key = name[len("metadata[") : -1]
            if not key or len(key) > 64 or len(value) > 512:
                raise bad_request("metadata filter keys are 1-64 characters, values at most 512.", param=name)
            found[key] = value
        elif name == "metadata":
            raise bad_request("Filter by metadata as metadata[key]=value.", param="metadata")
    return found or None


def jobs_router(service: JobService) -> APIRouter:
    router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"], responses=ERRORS)

    @router.post("", response_model=FineTuningJob, summary="Create a fine-tuning job")
    def create_job(
        body: CreateJobRequest,
        request: Request,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=256)] = None,
    ):
        project = project_of(request)
        job, created = service.create(project, body, idempotency_key=idempotency_key)
        headers = None if created or body.dry_run else {"Idempotent-Replayed": "true"}
        return json_response(render_job(job), headers=headers)

    @router.get("", response_model=JobList)
    async def list_jobs(
        request: Request,
        after: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ):
        project = project_of(request)
        records, has_more = service.list(project, limit=limit, after=after, metadata=_metadata_filter(request))
        return json_response(page([render_job(r) for r in records], has_more))

    @router.get("/{fine_tuning_job_id}", response_model=FineTuningJob)
    async def retrieve_job(fine_tuning_job_id: JobId, request: Request):
        project = project_of(request)
        return json_response(render_job(service.get(project, fine_tuning_job_id)))

    @router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
    def cancel_job(fine_tuning_job_id: JobId, request: Request):
        project = project_of(request)
        return json_response(render_job(service.cancel(project, fine_tuning_job_id)))

    @router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJob)
    def pause_job(fine_tuning_job_id: JobId, request: Request):
        project = project_of(request)
        return json_response(render_job(service.pause(project, fine_tuning_job_id)))

    @router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJob)
    def resume_job(fine_tuning_job_id: JobId, request: Request):
        project = project_of(request)
        return json_response(render_job(service.resume(project, fine_tuning_job_id)))

    @router.get("/{fine_tuning_job_id}/events", response_model=JobEventList)
    async def list_events(
        fine_tuning_job_id: JobId, request: Request, after: Cursor = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ):
        project = project_of(request)
        records, has_more = service.events(project, fine_tuning_job_id, limit=limit, after=after)
        return json_response(page([render_event(r) for r in records], has_more))

    @router.get("/{fine_tuning_job_id}/checkpoints", response_model=JobCheckpointList)
    async def list_checkpoints(
        fine_tuning_job_id: JobId, request: Request, after: Cursor = None, limit: Annotated[int, Query(ge=1, le=100)] = 10
    ):
        project = project_of(request)
        records, has_more = service.checkpoints(project, fine_tuning_job_id, limit=limit, after=after)
        return json_response(page([render_checkpoint(r) for r in records], has_more, with_ids=True))

    return router

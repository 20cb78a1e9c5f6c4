"""Routes: /models (the base catalog and this project's fine-tuned models)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool

from tuneplane.api.auth import project_of
from tuneplane.api.errors import not_found
from tuneplane.api.responses import json_response
from tuneplane.api.schemas import ErrorResponse, Model, ModelList, render_catalog_model
from tuneplane.domain.catalog import Catalog
from tuneplane.domain.ids import parse_fine_tuned_model
from tuneplane.domain.records import JobRecord
from tuneplane.services.jobs import JobService


def _render_fine_tuned(job: JobRecord) -> dict:
    return {"id": job.fine_tuned_model, "object": "model", "created": job.finished_at or job.created_at, "owned_by": job.project}


def models_router(catalog: Catalog, jobs: JobService) -> APIRouter:
    router = APIRouter(tags=["models"], responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})

    @router.get("/models", response_model=ModelList)
    async def list_models(request: Request):
        project = project_of(request)
        tuned = await run_in_threadpool(jobs.fine_tuned_models, project)
        data = [render_catalog_model(m) for m in catalog.models()] + [_render_fine_tuned(j) for j in tuned]
        return json_response({"object": "list", "data": data})

    @router.get("/models/{model}", response_model=Model)
    async def retrieve_model(model: Annotated[str, Path(min_length=1, max_length=256)], request: Request):
        project = project_of(request)
        base = catalog.get(model)
        if base is not None:
            return json_response(render_catalog_model(base))
        parts = parse_fine_tuned_model(model)
        if parts is not None and parts["project"] == project:
            job = jobs.jobs.get_job(project, parts["job_id"])
            if job is not None and job.status == "succeeded" and job.fine_tuned_model == model:
                return json_response(_render_fine_tuned(job))
        raise not_found("model", model, param="model", code="model_not_found")

    return router

"""Wire objects, one model per OpenAI object, rendered from stored records.

Routers return pre-serialised JSON (rendering dicts is the hot path of retrieve and list), but declare
these models as ``response_model`` so /openapi.json describes exactly what is sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from tuneplane.domain.catalog import CatalogModel
from tuneplane.domain.records import CheckpointRecord, EventRecord, FileRecord, JobRecord


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class FileObject(BaseModel):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None
    expires_at: int | None


class FileList(BaseModel):
    object: Literal["list"]
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"]
    deleted: bool


class JobErrorObject(BaseModel):
    code: str
    message: str
    param: str | None


class Hyperparameters(BaseModel):
    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None
    n_epochs: int | Literal["auto"] | None = None


class FineTuningJob(BaseModel):
    object: Literal["fine_tuning.job"]
    id: str
    created_at: int
    error: JobErrorObject | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: Hyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[dict[str, Any]] | None
    metadata: dict[str, str] | None
    method: dict[str, Any]
    user_provided_suffix: str | None
    # Extensions.
    peft: dict[str, Any]
    compute: str
    deploy: bool
    deployment: dict[str, Any] | None
    estimate: dict[str, Any] | None


class JobList(BaseModel):
    object: Literal["list"]
    data: list[FineTuningJob]
    has_more: bool


class JobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"]
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None


class JobEventList(BaseModel):
    object: Literal["list"]
    data: list[JobEvent]
    has_more: bool


class JobCheckpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"]
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float | None]
    step_number: int


class JobCheckpointList(BaseModel):
    object: Literal["list"]
    data: list[JobCheckpoint]
    has_more: bool
    first_id: str | None
    last_id: str | None


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class Health(BaseModel):
    status: Literal["ok"]
    version: str


# ---------------------------------------------------------------------------------------------
# Rendering: records -> wire dicts.


def render_file(f: FileRecord) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": f.status,
        "status_details": f.status_details,
        "expires_at": f.expires_at,
    }


def render_job(j: JobRecord) -> dict[str, Any]:
    hp = j.method.get(j.method.get("type", ""), {}).get("hyperparameters", {})
    return {
        "object": "fine_tuning.job",
        "id": j.id,
        "created_at": j.created_at,
        "error": j.error.model_dump() if j.error else None,
        "fine_tuned_model": j.fine_tuned_model,
        "finished_at": j.finished_at,
        "hyperparameters": {
            "batch_size": hp.get("batch_size"),
            "learning_rate_multiplier": hp.get("learning_rate_multiplier"),
            "n_epochs": hp.get("n_epochs"),
        },
        "model": j.model,
        "organization_id": j.project,
        "result_files": j.result_files,
        "seed": j.seed,
        "status": j.status,
        "trained_tokens": j.trained_tokens,
        "training_file": j.training_file,
        "validation_file": j.validation_file,
        "estimated_finish": j.estimated_finish,
        "integrations": j.integrations,
        "metadata": j.metadata,
        "method": j.method,
        "user_provided_suffix": j.user_provided_suffix,
        "peft": j.peft,
        "compute": j.compute,
        "deploy": j.deploy,
        "deployment": j.deployment,
        "estimate": j.estimate,
    }


def render_event(e: EventRecord) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": e.id,
        "created_at": e.created_at,
        "level": e.level,
        "message": e.message,
        "type": e.type,
        "data": e.data,
    }


def render_checkpoint(c: CheckpointRecord) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": c.id,
        "created_at": c.created_at,
        "fine_tuned_model_checkpoint": c.fine_tuned_model_checkpoint,
        "fine_tuning_job_id": c.job_id,
        "metrics": c.metrics,
        "step_number": c.step_number,
    }


def render_catalog_model(m: CatalogModel) -> dict[str, Any]:
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by}

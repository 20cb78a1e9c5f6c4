"""Stored records shared by every port adapter.

A record is what a store keeps; the API's wire objects (tuneplane.api.schemas) are rendered from
records. Every store adapter (SQLite, Azure Table) round-trips these losslessly through
``model_dump(mode="json")`` / ``model_validate``.

Ids are time-sortable (see tuneplane.domain.ids): sorting by id sorts by creation time, so a
cursor page is ``WHERE id < :after ORDER BY id DESC LIMIT n`` on an index, in every adapter.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal[
    "validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

FileFormat = Literal["chat", "dpo", "none"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileRecord(_Record):
    id: str  # file-…
    project: str
    bytes: int
    created_at: int  # unix seconds
    filename: str  # sanitised display name, never used as a path
    purpose: str  # fine-tune | fine-tune-results | batch | assistants | …
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    content_key: str  # key in the ContentStore; never derived from the user's filename
    sha256: str
    # Validation results for purpose=fine-tune, so job creation can check them without re-reading.
    format: FileFormat = "none"
    example_count: int = 0
    expires_at: int | None = None


class JobError(_Record):
    code: str
    message: str
    param: str | None = None


class JobRecord(_Record):
    """A fine-tuning job. Field names follow OpenAI's FineTuningJob; extensions follow them."""

    id: str  # ftjob-…
    project: str
    created_at: int
    status: JobStatus
    model: str  # the base model (catalog name or ft: model) as the user asked for it
    training_file: str
    validation_file: str | None = None
    seed: int
    user_provided_suffix: str | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: JobError | None = None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    # method as OpenAI renders it: {"type": "supervised", "supervised": {"hyperparameters": {...}}}
    # with "auto" values resolved at creation time.
    method: dict[str, Any]
    # Extensions (reachable via the openai client's extra_body).
    peft: dict[str, Any] = Field(default_factory=dict)
    compute: str = "local"
    deploy: bool = True
    deployment: dict[str, Any] | None = None
    estimate: dict[str, Any] | None = None
    # Control-plane bookkeeping, not on the wire.
    desired_status: Literal["run", "pause", "cancel"] = "run"
    backend_ref: str | None = None  # the backend's run id/name once submitted
    attempt: int = 0
    version: int = 0  # optimistic concurrency; stores bump it on every update


class EventRecord(_Record):
    id: str  # ftevent-…, time-sortable
    job_id: str
    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class CheckpointRecord(_Record):
    id: str  # ftckpt-…
    job_id: str
    created_at: int
    step_number: int
    fine_tuned_model_checkpoint: str  # ft:…:ckpt-step-N
    metrics: dict[str, float | None] = Field(default_factory=dict)
    location: str | None = None  # where the backend keeps it (path or azureml:// uri)


class ApiKeyRecord(_Record):
    id: str  # key-…
    project: str
    name: str | None = None
    key_hash: str  # sha256 hex of the secret; the secret itself is never stored
    prefix: str  # first characters of the secret, for humans to recognise it
    created_at: int
    revoked_at: int | None = None

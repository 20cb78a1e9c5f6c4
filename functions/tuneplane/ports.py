"""Ports: the seams between the control plane and the world.

Each port has a local adapter (the embedded default) and an Azure adapter, and both pass one
shared contract test suite (tests/functions/stores/test_contract.py runs every store adapter,
the Azure ones against Azurite).

Rules every adapter follows:
- Records round-trip losslessly (tuneplane.domain.records).
- Lists are newest first unless ``order="asc"`` is asked for, paged by a cursor ``after`` that is
  the id of the last item of the previous page. Ids are time-sortable, so a page is an indexed
  range query: cost O(page), never O(total).
- Another project's object behaves exactly like a missing one (``None`` / ``NotFound``).
- A write either happens whole or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol, runtime_checkable

from tuneplane.domain.records import (
    ApiKeyRecord,
    CheckpointRecord,
    EventRecord,
    FileRecord,
    JobRecord,
)


class StoreError(Exception):
    """Base class for store failures that the API maps to an error envelope."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """An optimistic-concurrency check failed: somebody else updated the record first."""


class AlreadyExists(StoreError):
    pass


@runtime_checkable
class FileStore(Protocol):
    """File metadata (the bytes live in a ContentStore)."""

    def create_file(self, record: FileRecord) -> None:
        """Insert; raises AlreadyExists if the id is taken."""

    def get_file(self, project: str, file_id: str) -> FileRecord | None: ...

    def list_files(
        self,
        project: str,
        *,
        purpose: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> list[FileRecord]: ...

    def delete_file(self, project: str, file_id: str) -> bool:
        """Remove the record; False if it was not there."""


@runtime_checkable
class JobStore(Protocol):
    """Fine-tuning jobs, their events and their checkpoints."""

    def create_job(self, record: JobRecord, *, idempotency_key: str | None = None) -> tuple[JobRecord, bool]:
        """Insert the job atomically with its idempotency key.

        Returns ``(job, created)``. If ``idempotency_key`` was already used in this project, nothing
        is written and the job first created with that key is returned with ``created=False``.
        """

    def get_job(self, project: str, job_id: str) -> JobRecord | None: ...

    def list_jobs(
        self,
        project: str,
        *,
        limit: int = 20,
        after: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> list[JobRecord]:
        """Newest first. ``metadata`` keeps only jobs whose metadata holds every given pair."""

    def update_job(self, record: JobRecord) -> JobRecord:
        """Compare-and-swap on ``record.version``.

        Succeeds only if the stored version equals ``record.version``; stores the record with
        ``version + 1`` and returns it. Otherwise raises Conflict (or NotFound).
        """

    def list_unfinished_jobs(self) -> list[JobRecord]:
        """Every job, across projects, whose status is not terminal, oldest first (the FIFO)."""

    def append_event(self, project: str, event: EventRecord) -> bool:
        """Idempotent by ``event.id``: a second append of the same id is a no-op returning False."""

    def list_events(
        self, project: str, job_id: str, *, limit: int = 20, after: str | None = None
    ) -> list[EventRecord]:
        """Newest first, as OpenAI lists job events."""

    def put_checkpoint(self, project: str, checkpoint: CheckpointRecord) -> bool:
        """Idempotent by ``checkpoint.id``."""

    def list_checkpoints(
        self, project: str, job_id: str, *, limit: int = 10, after: str | None = None
    ) -> list[CheckpointRecord]:
        """Newest first."""


@runtime_checkable
class KeyStore(Protocol):
    """API keys. Only a hash of each secret is stored."""

    def create_key(self, record: ApiKeyRecord) -> None: ...

    def find_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The active (not revoked) key with this hash, or None."""

    def list_keys(self, project: str | None = None) -> list[ApiKeyRecord]: ...

    def revoke_key(self, key_id: str) -> bool: ...


class Upload(Protocol):
    """A pending content write. Nothing is visible under the key until ``commit``."""

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None:
        """Discard everything written; safe to call after a failed write, and idempotent."""


@runtime_checkable
class ContentStore(Protocol):
    """File contents by opaque key (a directory locally, a blob container in Azure)."""

    def begin_upload(self, key: str) -> Upload: ...

    def open_read(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """Stream the content; raises NotFound."""

    def delete(self, key: str) -> bool: ...

    def exists(self, key: str) -> bool: ...

    def uri(self, key: str) -> str:
        """Where a training backend can read it (a local path, or a blob URL)."""


# ----------------------------------------------------------------------------------------------
# Execution ports (used by the reconciler). The local adapters run the trainer as a subprocess and
# a local inference server; the Azure adapters use azure-ai-ml.


class BackendError(Exception):
    """A training/registry/deployment backend failed; ``code`` and ``message`` go on the job."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BackendUnavailable(BackendError):
    """Transient (network, 429, 5xx) and the retry budget is spent: change nothing, retry next pass."""


class CapacityUnavailable(BackendError):
    """Quota or capacity refused the run: the job stays ``queued`` with an event, retried later."""


class PermanentBackendError(BackendError):
    """Retrying cannot help (bad environment, unknown compute, unregistrable model): fail the job."""


class BackendMisconfigured(BackendError):
    """A setting (credential, workspace, endpoint) is wrong; the API answers 503 naming ``setting``."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__("backend_misconfigured", message)
        self.setting = setting


class RunState(Protocol):
    """What a TrainingBackend observed about one job's run."""

    status: Literal["queued", "running", "paused", "succeeded", "failed", "cancelled", "unknown"]
    error: dict[str, Any] | None
    trained_tokens: int | None
    estimated_finish: int | None
    output_uri: str | None


@runtime_checkable
class TrainingBackend(Protocol):
    def submit(self, job: JobRecord, spec: dict[str, Any]) -> str:
        """Start (or adopt, if it already exists) the run for this job; idempotent by job id.

        Returns the backend reference stored in ``JobRecord.backend_ref``.
        """

    def observe(self, job: JobRecord) -> RunState: ...

    def read_events(self, job: JobRecord, after: str | None = None) -> list[EventRecord]:
        """Events the run produced since the event id ``after``; ids are stable across calls."""

    def read_checkpoints(self, job: JobRecord) -> list[CheckpointRecord]: ...

    def read_results(self, job: JobRecord) -> bytes | None:
        """The finished run's ``results.csv`` (OpenAI's step-metrics columns), or None if it wrote
        none; the reconciler stores it as the job's ``fine-tune-results`` file."""

    def cancel(self, job: JobRecord) -> None: ...

    def pause(self, job: JobRecord) -> None: ...


@runtime_checkable
class ModelRegistry(Protocol):
    def register(
        self, *, project: str, name: str, source_uri: str, base_model: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        """Register (idempotently) a new version of ``name``; returns the registry entry."""

    def get(self, project: str, name: str) -> dict[str, Any] | None: ...

    def list(self, project: str) -> list[dict[str, Any]]: ...


@runtime_checkable
class Deployer(Protocol):
    def deploy(self, *, project: str, model: str, base_model: str, source_uri: str) -> dict[str, Any]:
        """Start serving ``model``; idempotent. Returns the deployment object (status, endpoint)."""

    def status(self, project: str, model: str) -> dict[str, Any] | None: ...

    def undeploy(self, project: str, model: str) -> bool: ...
